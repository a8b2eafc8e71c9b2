"""Everything specific to Llama 3.x: tokenizer, chat format, tool-call syntax, model, generator."""

"""Everything specific to Llama 3.x: tokenizer, chat format, tool-call syntax, model, generator.

The package itself re-exports nothing and imports nothing, so that `llama_agents.llama.tokenizer`
and the other torch-free modules can be imported without torch: import each name from its module
(`llama_agents.llama.generation.Llama`, `llama_agents.llama.tokenizer.Tokenizer`, ...).
"""

__all__: list[str] = []

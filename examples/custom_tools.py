"""Give Llama 3.1 your own Python functions as tools with `@tool`.

    python examples/custom_tools.py /path/to/Llama3.1-8B-Instruct

The JSON schema the model sees comes from the type hints and the docstring. `convert_currency`
rejects unknown currency codes with `ModelRetry`: the message goes back to the model as an error
result, and the model corrects its call (e.g. "dollars" -> "USD"); a failure never crashes the run.
Pass `--tool-format function_tag` or `python_list` on the CLI (or `tool_prompt_format=`) to use
the other Llama tool-call styles.
"""

from __future__ import annotations

import sys

from llama_agents.agent import Agent
from llama_agents.errors import ModelRetry
from llama_agents.tools import tool

RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 149.5}


@tool
def convert_currency(amount: float, source: str, target: str) -> str:
    """Convert an amount of money from one currency to another.

    Args:
        amount: how much money, in the source currency
        source: ISO 4217 code of the currency to convert from, e.g. "USD"
        target: ISO 4217 code of the currency to convert to, e.g. "EUR"
    """
    for code in (source, target):
        if code not in RATES:
            raise ModelRetry(f"unknown currency code {code!r}; use one of {', '.join(RATES)}")
    return f"{amount * RATES[target] / RATES[source]:.2f} {target}"


@tool
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def main(checkpoint: str) -> None:
    with Agent(checkpoint, tools=[convert_currency, word_count], temperature=0.0) as agent:
        result = agent.run("How much is 120 dollars in euros?")
        for run in result.tool_runs:
            status = "error" if run.is_error else "ok"
            print(f"[{status}] {run.call.name}({run.call.arguments}) -> {run.content}", file=sys.stderr)
        print(result.answer)
        result.write_jsonl("custom_tools_transcript.jsonl")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} CHECKPOINT_DIR")
    main(sys.argv[1])

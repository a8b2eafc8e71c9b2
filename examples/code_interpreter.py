"""Let Llama 3.1 write and run Python in a sandbox, keeping state across the conversation.

    python examples/code_interpreter.py /path/to/Llama3.1-8B-Instruct

`Environment: ipython` in the system prompt lets the model write `<|python_tag|>` code; the
`CodeInterpreter` runs it under bubblewrap (install `bubblewrap`) and the output goes back to the
model. The second question reuses what the first defined: a session keeps the interpreter's
variables (and the model's KV cache) until `agent.reset()`.
"""

from __future__ import annotations

import sys

from llama_agents.agent import Agent
from llama_agents.tools.code_interpreter import CodeInterpreter


def main(checkpoint: str) -> None:
    with Agent(checkpoint, tools=[CodeInterpreter()], temperature=0.0) as agent:
        for question in (
            "Write a function that checks whether a number is prime and use it to check 7.",
            "Using that function, list the primes below 50.",
        ):
            result = agent.run(question)
            for run in result.tool_runs:
                print(f"--- code ---\n{run.call.arguments.get('code', '')}\n--- output ---\n{run.content}")
            print(f"> {question}\n{result.answer}\n")
            step = result.steps[0]
            print(
                f"(first step: {step.prefilled} prompt tokens prefilled, {step.reused} reused from cache)\n"
            )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} CHECKPOINT_DIR")
    main(sys.argv[1])

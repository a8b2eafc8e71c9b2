"""Answer a question with Llama 3.1's built-in web search (brave_search).

    export BRAVE_SEARCH_API_KEY=...            # https://api-dashboard.search.brave.com
    python examples/search.py /path/to/Llama3.1-8B-Instruct "Who won the 2024 Tour de France?"

The model writes `<|python_tag|>brave_search.call(query="...")<|eom_id|>`; the agent runs the search,
sends the results back as an `ipython` message, and the model answers. Tool calls go to stderr,
the answer streams to stdout.
"""

from __future__ import annotations

import sys

from llama_agents.agent import Agent
from llama_agents.tools import BraveSearch


def main(checkpoint: str, question: str) -> None:
    with Agent(checkpoint, tools=[BraveSearch()], temperature=0.0) as agent:
        for event in agent.stream(question):
            if event.type == "text_delta":
                print(event.text, end="", flush=True)
            elif event.type == "tool_call_started":
                print(f"[searching] {event.call.arguments.get('query')}", file=sys.stderr)
            elif event.type == "final_answer":
                print()
                if event.result.stop_reason != "final_answer":
                    print(f"[stopped] {event.result.detail}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} CHECKPOINT_DIR [QUESTION]")
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "What is the latest price of 1oz gold?")

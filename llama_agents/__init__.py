"""llama-agents: tool-using agents on Meta's Llama 3.1, exact to its native prompt format."""

__version__ = "0.1.0"

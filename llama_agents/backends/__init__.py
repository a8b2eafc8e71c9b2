"""Backends: what the agent calls to complete tokens.

`Backend` is the protocol (see `backends/base.py`). `LocalBackend` runs a Llama checkpoint in this
process; it is imported lazily so that `import llama_agents.backends` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_agents.backends.base import Backend, CompletionStats, read_stats

if TYPE_CHECKING:
    from llama_agents.backends.local import LocalBackend

__all__ = ["Backend", "CompletionStats", "LocalBackend", "read_stats"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from llama_agents.backends.local import LocalBackend

        return LocalBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Backends: what the agent calls to complete tokens.

`Backend` is the protocol (see `backends/base.py`). `LocalBackend` runs a Llama checkpoint in this
process; it is imported lazily so that `import llama_agents.backends` does not import torch.
`connect(url)` drives a model server (vLLM, Ollama, llama.cpp, OpenAI-compatible; `remote.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llama_agents.backends._remote import RemoteBackend, RemoteSettings
from llama_agents.backends.base import Backend, CompletionStats, read_stats
from llama_agents.backends.llamacpp import LlamaCppBackend
from llama_agents.backends.ollama import OllamaBackend
from llama_agents.backends.openai import OpenAIBackend, VLLMBackend
from llama_agents.backends.remote import connect
from llama_agents.errors import BackendError

if TYPE_CHECKING:
    from llama_agents.backends.local import LocalBackend

__all__ = [
    "Backend",
    "BackendError",
    "CompletionStats",
    "LlamaCppBackend",
    "LocalBackend",
    "OllamaBackend",
    "OpenAIBackend",
    "RemoteBackend",
    "RemoteSettings",
    "VLLMBackend",
    "connect",
    "read_stats",
]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from llama_agents.backends.local import LocalBackend

        return LocalBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The backend protocol: what the agent calls to turn prompt tokens into generated tokens.

A backend is any object with a `tokenizer` and a `complete` method (see `Backend`). The agent
builds the exact Llama 3.1 prompt itself (with `ChatFormat`), hands the token ids to the backend and
reads generated ids back one by one; it never sees tensors, devices or sampling internals.

This module defines the contract and a small helper to read a backend's optional statistics. It
does not implement a backend: `LocalBackend` (`backends/local.py`) runs the model in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from llama_agents.llama.tokenizer import Tokenizer

__all__ = ["Backend", "CompletionStats", "read_stats"]


@runtime_checkable
class Backend(Protocol):
    """What the agent needs from a model.

    Required:

    - `tokenizer`: the Llama 3 `Tokenizer` whose ids `complete` takes and yields.
    - `complete(prompt_tokens, *, max_tokens, temperature, top_p)`: yields the generated token ids
      one at a time, *including* the stop token when one is produced, and stops right after a stop
      token (`<|eom_id|>`, `<|eot_id|>` or `<|end_of_text|>`) or after `max_tokens` ids. The prompt is
      a complete Llama 3.1 dialog prompt (it starts with `<|begin_of_text|>` and ends with an open
      assistant header). A backend may keep a KV cache between calls: the agent only ever appends
      to a conversation's prompt, so the previous prompt plus the previous generated ids is always a
      prefix of the next prompt within a session.

    Optional, read with `getattr` (a backend without them works):

    - `last_stats`: after `complete` has finished, an object with `prefilled` (prompt ids run
      through the model), `reused` (prompt ids served from the cache) and `generated` ints.
    - `max_seq_len`: the context length; the agent stops a run cleanly instead of overflowing it.
    """

    tokenizer: Tokenizer

    def complete(
        self, prompt_tokens: list[int], *, max_tokens: int, temperature: float, top_p: float
    ) -> Iterator[int]: ...


@dataclass(frozen=True)
class CompletionStats:
    """What one `complete` call cost: prompt ids prefilled and reused from the cache, ids generated.

    `prefilled` and `reused` are None when the backend does not report them.
    """

    prompt_tokens: int
    prefilled: int | None
    reused: int | None
    generated: int


def read_stats(backend: Any, prompt_tokens: int, generated: int) -> CompletionStats:
    """Read a backend's optional `last_stats` after a completion, falling back to what we counted."""
    stats = getattr(backend, "last_stats", None)
    prefilled = _int_or_none(getattr(stats, "prefilled", None))
    reused = _int_or_none(getattr(stats, "reused", None))
    return CompletionStats(prompt_tokens, prefilled, reused, generated)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

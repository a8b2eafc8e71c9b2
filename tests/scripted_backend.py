"""A scripted backend for agent tests: replies written as the model would write them.

Each reply is the text of one assistant message exactly as Llama 3.1 writes it, special tokens
included (`'<|python_tag|>brave_search.call(query="x")<|eom_id|>'`). It is encoded with the real
tokenizer (special tokens allowed) and yielded id by id, honouring `max_tokens` and stopping after
the first stop token, as the `Backend` protocol requires. Every prompt received is recorded, and a
KV cache is simulated (the previous prompt plus the ids generated after it) so that `last_stats`
reports how many prompt ids a real cache could have reused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from llama_agents.llama.tokenizer import Tokenizer

__all__ = ["ScriptExhausted", "ScriptedBackend", "ScriptedStats"]

Reply = str | Callable[[str], str]
"""A reply text, or a function of the prompt text (decoded) that returns the reply text."""


class ScriptExhausted(AssertionError):
    """The agent asked for more completions than the script holds."""


@dataclass(frozen=True)
class ScriptedStats:
    prompt_tokens: int
    prefilled: int
    reused: int
    generated: int


class ScriptedBackend:
    """Replays scripted replies; records every prompt (`prompts`) it is given."""

    def __init__(self, tokenizer: Tokenizer, replies: Sequence[Reply], *, max_seq_len: int | None = None):
        self.tokenizer = tokenizer
        self.replies: list[Reply] = list(replies)
        self.prompts: list[list[int]] = []
        self.completions: list[list[int]] = []
        self.last_stats: ScriptedStats | None = None
        self.max_seq_len = max_seq_len
        self._cache: list[int] = []

    def complete(
        self, prompt_tokens: list[int], *, max_tokens: int, temperature: float, top_p: float
    ) -> Iterator[int]:
        prompt = list(prompt_tokens)
        self.prompts.append(prompt)
        if len(self.completions) >= len(self.replies):
            raise ScriptExhausted(f"the script has {len(self.replies)} replies; the agent asked for one more")
        reply = self.replies[len(self.completions)]
        text = reply(self.tokenizer.decode(prompt)) if callable(reply) else reply
        ids = self.tokenizer.encode(text, allowed_special="all")
        generated: list[int] = []
        self.completions.append(generated)
        reused = _common_prefix(self._cache, prompt)
        stop = self.tokenizer.stop_tokens
        try:
            for token in ids[:max_tokens]:
                generated.append(token)
                yield token
                if token in stop:
                    break
        finally:
            self._cache = prompt + generated
            self.last_stats = ScriptedStats(len(prompt), len(prompt) - reused, reused, len(generated))


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n

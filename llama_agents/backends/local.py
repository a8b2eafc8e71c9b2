"""`LocalBackend`: the backend protocol over an in-process `Llama`, keeping its KV cache across calls.

What it does: turns `complete(prompt_tokens, ...)` into `Llama.stream`, with an optional seed so
that sampling is reproducible across a whole run, and exposes the generator's `last_stats`
(prefilled / reused / generated, timings) and `max_seq_len`. Because the agent only ever appends
to a conversation, each call after the first prefills only the new tokens.

Under torchrun (model parallel), only rank 0 gets a usable backend: on every other rank the
constructor runs `parallel.run_worker` (taking part in each forward pass rank 0 runs) and then ends
the process quietly with `SystemExit` (status 0 when rank 0 finished, 1 when it vanished), so scripts,
examples and the CLI work unchanged under `torchrun --nproc-per-node N`.

What it does not do: batching, several conversations at once (they would evict each other's cache:
correct, only slower), or running the model in another process or machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from ..llama.generation import GenerationStats, Llama
from ..llama.parallel import ParallelError, run_worker
from ..llama.tokenizer import Tokenizer

__all__ = ["LocalBackend"]

logger = logging.getLogger(__name__)


class LocalBackend:
    """Run a Llama checkpoint in this process.

    `LocalBackend(llama, seed=None)`: wrap a built `Llama`. `seed`: an int seeds a private
    `torch.Generator` on the model's device, so a run is reproducible; `None` samples from torch's
    default generator.
    """

    def __init__(self, llama: Llama, *, seed: int | None = None) -> None:
        if llama.parallel is not None and not llama.parallel.is_leader:
            try:
                run_worker(llama)
            except ParallelError as e:
                logger.error("%s", e)
                raise SystemExit(1) from e
            raise SystemExit(0)
        self.llama = llama
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator(device=llama.device)
            self.generator.manual_seed(seed)

    @classmethod
    def from_checkpoint(
        cls, ckpt_dir: str | os.PathLike[str], *, seed: int | None = None, **build_kwargs: Any
    ) -> LocalBackend:
        """Build a `Llama` from `ckpt_dir` (`build_kwargs` go to `Llama.build`) and wrap it."""
        return cls(Llama.build(ckpt_dir, **build_kwargs), seed=seed)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.llama.tokenizer

    @property
    def max_seq_len(self) -> int:
        return self.llama.max_seq_len

    @property
    def last_stats(self) -> GenerationStats | None:
        """The statistics of the last finished (or closed) `complete` call."""
        return self.llama.last_stats

    def complete(
        self, prompt_tokens: list[int], *, max_tokens: int, temperature: float, top_p: float
    ) -> Iterator[int]:
        """Yield generated ids, the stop token included, stopping after it or after `max_tokens`.

        Bad arguments (an empty or too long prompt, `max_tokens < 1`, a bad temperature) raise here,
        at the call, before any work.
        """
        return self.llama.stream(
            prompt_tokens,
            max_gen_len=max_tokens,
            temperature=temperature,
            top_p=top_p,
            generator=self.generator,
        )

    def reset(self) -> None:
        """Forget the cached conversation (the next call prefills its whole prompt)."""
        self.llama.reset_cache()

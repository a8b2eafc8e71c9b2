"""The compiled decode step: one token per sequence through `torch.compile(Transformer.forward_at)`.

What it does: decides whether to compile (`resolve_compile`: the caller's choice, else the
`LLAMA_AGENTS_COMPILE` environment variable, else "on CUDA yes, elsewhere no"); compiles the
fixed-shape `forward_at` once (`mode="reduce-overhead"` on CUDA, which records CUDA graphs; inductor's
default mode elsewhere), with positions sliced from a device-resident `arange`, so a step moves no data
from the host and one graph serves every position; warms it up and reports the cost (`CompileStats`).

What it does not do: prefill (prompts run eagerly through SDPA: their lengths vary, and one prefill per
turn is not where the time goes), sampling (the eager sampler runs on the device on the returned
logits, so greedy and seeded sampling are the same functions as on the eager path), model-parallel
runs (fairscale's collectives are not traced; `resolve_compile` says no), or range checks on positions
(the generator's length policy keeps them inside the cache).

Note for CUDA graphs: the returned logits live in the graph's output buffer and are overwritten by the
next step; consume them (sample) before calling again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UsageError
from .model import Transformer

__all__ = ["COMPILE_ENV", "CompileStats", "DecodeStep", "resolve_compile"]

logger = logging.getLogger(__name__)

COMPILE_ENV = "LLAMA_AGENTS_COMPILE"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class CompileStats:
    """Whether the decode step is compiled, why, and what the compilation cost.

    enabled: the compiled step is used for single-token steps. reason: what decided it (`"argument"`,
    the environment variable, `"CUDA device"`, `"not CUDA"`, `"model parallel"`). mode: the
    `torch.compile` mode (None: inductor's default). warmup_s: seconds spent compiling and warming up
    (batch size 1, paid once, when the `Llama` is built); batch sizes compiled later are logged.
    """

    enabled: bool
    reason: str
    mode: str | None = None
    warmup_s: float = 0.0


def resolve_compile(
    compile: bool | None, device: torch.device, model_parallel_size: int = 1
) -> tuple[bool, str]:
    """`(enabled, reason)`: the argument if given, else `$LLAMA_AGENTS_COMPILE` (0/1), else CUDA only.

    A model split over several ranks is never compiled (asking for it is a `UsageError`).
    """
    if compile is not None and not isinstance(compile, bool):
        raise UsageError(f"compile must be True, False or None, got {compile!r}")
    if model_parallel_size > 1:
        if compile:
            raise UsageError(
                "compile=True is not supported with model parallelism (fairscale's collectives are not "
                "traced); pass compile=None or False"
            )
        return False, "model parallel"
    if compile is not None:
        return compile, "argument"
    env = os.environ.get(COMPILE_ENV)
    if env is not None and env.strip():
        value = env.strip().lower()
        if value in _TRUE:
            return True, f"{COMPILE_ENV}={env}"
        if value in _FALSE:
            return False, f"{COMPILE_ENV}={env}"
        raise UsageError(f"{COMPILE_ENV} must be 0 or 1 (or true/false), got {env!r}")
    if device.type == "cuda":
        return True, "CUDA device"
    return False, "not CUDA"


class DecodeStep:
    """`step(tokens [B, 1], start_pos) -> float32 logits [B, 1, vocab]` through the compiled `forward_at`.

    Holds the model's KV cache in place (the cache buffers are mutated inside the graph). `start_pos`
    is a Python int; the position tensor is a slice of a device `arange`, so nothing is copied.
    """

    def __init__(self, model: Transformer, max_seq_len: int) -> None:
        if model.cache is None:
            raise UsageError("DecodeStep needs a model with a KV cache: call setup_cache first")
        self.model = model
        self.mode: str | None = "reduce-overhead" if model.device.type == "cuda" else None
        self._positions = torch.arange(max_seq_len, device=model.device)
        self._fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.compile(
            model.forward_at, mode=self.mode, fullgraph=True, dynamic=False
        )
        self._batch_sizes: set[int] = set()
        self.calls = 0  # steps run through the compiled graph, the warm-up included

    def __call__(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        assert tokens.dim() == 2 and tokens.shape[1] == 1, f"one token per row, got {tuple(tokens.shape)}"
        bsz = tokens.shape[0]
        self.calls += 1
        if bsz not in self._batch_sizes:
            self._batch_sizes.add(bsz)
            logger.info("compiling the decode step for batch size %d (mode=%s)", bsz, self.mode)
        return self._fn(tokens, self._positions[start_pos : start_pos + 1])

    def warm_up(self, batch_size: int = 1) -> float:
        """Compile (and, on CUDA, record the graph) for `batch_size`; returns the seconds it took.

        Writes junk at position 0 of the first `batch_size` cache rows: call before any generation.
        """
        start = time.perf_counter()
        tokens = torch.zeros((batch_size, 1), dtype=torch.long, device=self.model.device)
        with torch.inference_mode():
            for _ in range(3):  # cudagraph trees record on a later call than the first
                self(tokens, 0)
        if self.model.device.type == "cuda":
            torch.cuda.synchronize(self.model.device)
        seconds = time.perf_counter() - start
        logger.info("decode step compiled and warmed up in %.1fs (mode=%s)", seconds, self.mode)
        return seconds

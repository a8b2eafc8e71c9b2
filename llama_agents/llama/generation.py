"""The Llama generator: build from a checkpoint, batch `generate`, streaming with KV-cache reuse, chat.

What it does:
- `Llama.build` loads a checkpoint through `checkpoint.py` on an explicit device and dtype (CUDA and
  bfloat16 when available, else CPU and float32) and allocates the KV cache explicitly. No global
  torch state is touched: no default device, no default dtype, no seeding, no `sys.stdout` games.
- `Llama.stream` generates for one prompt and yields each token id as soon as it is sampled (the
  stop token included). It remembers which tokens sit in the KV cache; a prompt that starts with
  them (the same conversation, one turn later) only prefills its new suffix, and a prompt that
  diverges reuses the longest common prefix. `last_stats` tells what happened.
- `Llama.generate` runs a batch of prompts of different lengths (left-aligned, like the reference),
  stopping each on `<|eot_id|>`, `<|eom_id|>` or `<|end_of_text|>`, with optional log-probabilities.
- `Llama.chat_completion` turns messages into an assistant `Message` through `ChatFormat`.

Length policy: a prompt needs room for at least one generated token (`len(prompt) < max_seq_len`),
else `PromptTooLongError` is raised before any work. `max_gen_len` is clipped to the room left
(`max_seq_len - len(prompt)`), so prompt plus generation never exceeds `max_seq_len`.

Speed: `build` fuses each layer's q/k/v and gate/up projections (`Transformer.fuse`). Single-token
steps (decode) go through `torch.compile(Transformer.forward_at)` (`_decode.py`): fixed shapes, the
position as a device tensor, CUDA graphs on GPU (`mode="reduce-overhead"`). Prompts are prefilled
eagerly through SDPA, projecting only the last position to the vocabulary (`last_only`) unless
`generate(logprobs=True, echo=True)` needs the prompt's logits. `compile=None` (default) compiles on
CUDA only; `LLAMA_AGENTS_COMPILE=0/1` decides when the argument is None; `compile_stats` says what
was chosen and what it cost. Sampling is the eager sampler, on the device, on the step's logits. The
host waits on the device once per token, to read the sampled id (the stop check).

Model parallel: under torchrun, `build` starts torch.distributed and fairscale's group (see
`parallel.py`), puts each rank on `cuda:$LOCAL_RANK` and loads its shard; rank 0 then drives
generation and announces every forward pass to the other ranks, which follow in `run_worker`.

What it does not do: speculative decoding, continuous batching, or thread
safety: one `Llama` runs one generation at a time (a stream left open is invalidated, with a clear
error, when another generation starts on the same object).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import PromptTooLongError, UsageError
from ..types import Message, StopReason, ToolPromptFormat
from ._decode import CompileStats, DecodeStep, resolve_compile
from ._sampling import check_sampling_params, sample_next_token, token_logprobs
from .args import ModelArgs
from .chat_format import ChatFormat
from .checkpoint import load_checkpoint, load_tokenizer, resolve_checkpoint_dir
from .model import Transformer
from .parallel import Coordinator, init_distributed, launched_world_size, local_device
from .tokenizer import Tokenizer

__all__ = ["GenerationResult", "GenerationStats", "Llama", "default_device", "default_dtype"]

logger = logging.getLogger(__name__)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA (float16 where bf16 is unsupported), float32 elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@dataclass(frozen=True)
class GenerationStats:
    """What one `stream` call did.

    prompt_tokens: length of the prompt. reused: prompt tokens whose keys/values were already in the
    cache. prefilled: prompt tokens run through the model (`prompt_tokens - reused`). generated: tokens
    yielded, the stop token included. ttft_s: seconds of work from the start to the first token
    (prefill + first sample). decode_s: seconds of work for the tokens after the first. Time the
    consumer spends between tokens is not counted. tokens_per_s: `(generated - 1) / decode_s`, the
    decode speed, or 0.0 when fewer than two tokens were generated.
    """

    prompt_tokens: int
    reused: int
    prefilled: int
    generated: int
    ttft_s: float
    decode_s: float
    tokens_per_s: float


@dataclass(frozen=True)
class GenerationResult:
    """One sequence of a batch `generate`.

    tokens: the generated ids, the stop token included when there is one. logprobs: the model's
    (untempered) log-probability of each of `tokens`, when asked. stop_reason: `end_of_turn` for
    `<|eot_id|>` or `<|end_of_text|>`, `end_of_message` for `<|eom_id|>`, `out_of_tokens` when
    `max_gen_len` (or the context) ran out. prompt_tokens / prompt_logprobs: with `echo=True`, the
    prompt and the log-probability of each prompt token given the ones before it (the first, which
    has nothing before it, gets 0.0).
    """

    tokens: list[int]
    stop_reason: StopReason
    logprobs: list[float] | None = None
    prompt_tokens: list[int] | None = None
    prompt_logprobs: list[float] | None = None


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Llama:
    """A Llama 3.x model with its tokenizer, chat format and KV cache, ready to generate.

    Build with `Llama.build(ckpt_dir, ...)`, or from parts with `Llama(model, tokenizer)`, where
    `model.setup_cache(...)` has already been called.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        *,
        max_seq_len: int,
        max_batch_size: int = 1,
        compile: bool | None = None,
    ) -> None:
        cache = model.cache
        if cache is None or cache.max_seq_len < max_seq_len or cache.max_batch_size < max_batch_size:
            have = (
                "no KV cache" if cache is None else f"a cache of {cache.max_batch_size} x {cache.max_seq_len}"
            )
            raise UsageError(
                f"the model has {have}; call model.setup_cache({max_batch_size}, {max_seq_len}) first "
                "(or use Llama.build)"
            )
        self.model = model
        self.args: ModelArgs = model.args
        self.tokenizer = tokenizer
        self.formatter = ChatFormat(tokenizer)
        self.max_seq_len = max_seq_len
        self.max_batch_size = max_batch_size
        self.last_stats: GenerationStats | None = None
        # The tokens whose keys/values are in row 0 of the KV cache, positions 0..len-1.
        self._cached: list[int] = []
        # Bumped whenever a generation starts; an open stream checks it before touching the cache.
        self._epoch = 0
        self._stop_ids = torch.tensor(sorted(tokenizer.stop_tokens), dtype=torch.long)
        # Model parallel: keeps the ranks in step (set by `build` when the world has several ranks).
        self.parallel: Coordinator | None = None
        # The compiled single-token step, compiled and warmed up here, once (see _decode.py).
        enabled, reason = resolve_compile(compile, model.device, model.model_parallel_size)
        self._decode: DecodeStep | None = None
        self.compile_stats = CompileStats(enabled=False, reason=reason)
        if enabled:
            self._decode = DecodeStep(model, max_seq_len)
            warmup_s = self._decode.warm_up(1)
            self.compile_stats = CompileStats(True, reason, self._decode.mode, warmup_s)
        logger.info("decode step: %s", self.compile_stats)

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        ckpt_dir: str | os.PathLike[str],
        *,
        max_seq_len: int = 8192,
        max_batch_size: int = 1,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        tokenizer: Tokenizer | str | os.PathLike[str] | None = None,
        progress: bool = True,
        compile: bool | None = None,
    ) -> Llama:
        """Load a checkpoint (Meta `.pth` or HF safetensors layout, local or URL), allocate the KV cache.

        max_seq_len: the context (KV cache and RoPE table length). max_batch_size: the most prompts
        one `generate` call takes. device: default CUDA if available (`cuda:$LOCAL_RANK` under
        torchrun, each rank then loading its model-parallel shard), else CPU. dtype: default
        bfloat16 on CUDA, float32 on CPU. tokenizer: a `Tokenizer` or a path to a `tokenizer.model`;
        by default the checkpoint's own. progress: show a loading bar on stderr. compile: run decode
        steps through `torch.compile` (True), eagerly (False), or None: `$LLAMA_AGENTS_COMPILE` if set,
        else compiled on CUDA only; compiling costs once, here (`compile_stats.warmup_s`).
        The projections are fused after loading (`Transformer.fuse`) in every case.
        """
        if not isinstance(max_seq_len, int) or max_seq_len < 2:
            raise UsageError(f"max_seq_len must be an int >= 2, got {max_seq_len!r}")
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise UsageError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        several_ranks = launched_world_size() > 1
        dev = torch.device(device) if device is not None else default_device()
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device {dev} was asked for but CUDA is not available; pass device='cpu'")
        if several_ranks and dev.type == "cuda" and dev.index is None:
            dev = local_device()  # each rank on its own GPU: cuda:$LOCAL_RANK
        init_distributed(dev)
        is_leader = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        progress = progress and is_leader  # one progress bar, rank 0's
        dt = dtype if dtype is not None else default_dtype(dev)

        start = time.perf_counter()
        local_dir = resolve_checkpoint_dir(ckpt_dir)
        if isinstance(tokenizer, Tokenizer):
            tok = tokenizer
        elif tokenizer is not None:
            tok = Tokenizer(tokenizer)
        else:
            tok = load_tokenizer(local_dir)
        model = load_checkpoint(
            local_dir, device=dev, dtype=dt, max_seq_len=max_seq_len, progress=progress, tokenizer=tok
        )
        model.eval()
        model.fuse()
        model.setup_cache(max_batch_size, max_seq_len, device=dev, dtype=dt)
        logger.info("built Llama from %s on %s (%s) in %.2fs", ckpt_dir, dev, dt, time.perf_counter() - start)
        llama = cls(model, tok, max_seq_len=max_seq_len, max_batch_size=max_batch_size, compile=compile)
        if torch.distributed.get_world_size() > 1:
            llama.parallel = Coordinator()
        return llama

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def cached_tokens(self) -> list[int]:
        """A copy of the tokens whose keys/values are in the KV cache (row 0), in order."""
        return list(self._cached)

    def reset_cache(self) -> None:
        """Forget what is in the KV cache: the next `stream` prefills its whole prompt."""
        self._cached = []

    # ------------------------------------------------------------------ checks

    def _check_prompt(self, prompt: Sequence[int], max_gen_len: int, what: str = "prompt") -> int:
        """Validate one prompt; return `max_gen_len` clipped to the room left in the context."""
        if len(prompt) == 0:
            raise UsageError(f"{what} is empty; it needs at least one token (usually <|begin_of_text|>)")
        room = self.max_seq_len - len(prompt)
        if room < 1:
            raise PromptTooLongError(
                f"{what} has {len(prompt)} tokens but max_seq_len is {self.max_seq_len}: it must be at "
                f"most {self.max_seq_len - 1} tokens to leave room for one generated token"
            )
        vocab = self.args.vocab_size
        bad = next((t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise UsageError(f"{what} contains token id {bad!r}, outside the vocabulary [0, {vocab})")
        if max_gen_len > room:
            logger.debug("max_gen_len %d clipped to %d (context room left)", max_gen_len, room)
        return min(max_gen_len, room)

    @staticmethod
    def _check_max_gen_len(max_gen_len: int) -> None:
        if not isinstance(max_gen_len, int) or max_gen_len < 1:
            raise UsageError(f"max_gen_len must be a positive int, got {max_gen_len!r}")

    def _stop_reason(self, token: int) -> StopReason:
        if token == self.tokenizer.eom_id:
            return StopReason.end_of_message
        return StopReason.end_of_turn

    # ------------------------------------------------------------------ streaming

    def stream(
        self,
        prompt_tokens: Sequence[int],
        *,
        max_gen_len: int,
        temperature: float = 0.6,
        top_p: float = 0.9,
        generator: torch.Generator | None = None,
    ) -> Iterator[int]:
        """Generate for one prompt, yielding each token id as soon as it is sampled.

        Stops after a stop token (yielded) or `max_gen_len` tokens (clipped to the context room).
        Arguments are checked here, before any work: a bad prompt raises at the call, not at the
        first `next()`. Reuses the KV cache for the longest prefix shared with the previous
        sequence. `last_stats` is set when the iterator ends or is closed.
        """
        self._check_max_gen_len(max_gen_len)
        check_sampling_params(temperature, top_p)
        prompt = list(prompt_tokens)
        max_gen_len = self._check_prompt(prompt, max_gen_len)
        return self._stream(prompt, max_gen_len, temperature, top_p, generator)

    def _forward(self, tokens: list[int], start_pos: int) -> torch.Tensor:
        """Run `tokens` for cache row 0 at `start_pos`, keeping `_cached` true; last-position logits."""
        # If the forward fails midway, positions >= start_pos hold garbage: forget them first.
        del self._cached[start_pos:]
        x = torch.tensor([tokens], dtype=torch.long, device=self.device)
        logits = self._run_model(x, start_pos, last_only=True)
        self._cached.extend(tokens)
        return logits[:, -1]

    def _run_model(self, tokens: torch.Tensor, start_pos: int, *, last_only: bool = False) -> torch.Tensor:
        """One forward pass; under model parallelism rank 0 first tells the other ranks to run it too.

        `last_only`: logits for the last position only (`Transformer.forward`); the ranks must agree
        on it (the output projection gathers across them), so it travels with the announcement.
        """
        if self.parallel is not None and self.parallel.is_leader:
            self.parallel.announce(tokens, start_pos, last_only=last_only)
        if self._decode is not None and tokens.shape[1] == 1:
            return self._decode(tokens, start_pos)
        return self.model.forward(tokens, start_pos, last_only=last_only)

    @torch.inference_mode()
    def _stream(
        self,
        prompt: list[int],
        max_gen_len: int,
        temperature: float,
        top_p: float,
        generator: torch.Generator | None,
    ) -> Iterator[int]:
        self._epoch += 1
        epoch = self._epoch
        # At least the last prompt token must be fed: its logits give the first new token.
        reused = min(_common_prefix_len(self._cached, prompt), len(prompt) - 1)
        prefilled = len(prompt) - reused
        generated = 0
        ttft = 0.0
        decode = 0.0
        logger.debug("stream: %d prompt tokens, %d reused, %d to prefill", len(prompt), reused, prefilled)
        try:
            t0 = time.perf_counter()
            logits = self._forward(prompt[reused:], reused)
            token = int(sample_next_token(logits, temperature=temperature, top_p=top_p, generator=generator))
            ttft = time.perf_counter() - t0
            generated = 1
            pos = len(prompt)
            while True:
                yield token
                if self._epoch != epoch:
                    raise UsageError(
                        "another generation started on this Llama while this stream was open; "
                        "its KV cache is no longer this stream's. Finish or close a stream first."
                    )
                if generated >= max_gen_len or token in self.tokenizer.stop_tokens:
                    return
                t0 = time.perf_counter()
                logits = self._forward([token], pos)
                token = int(
                    sample_next_token(logits, temperature=temperature, top_p=top_p, generator=generator)
                )
                decode += time.perf_counter() - t0
                pos += 1
                generated += 1
        finally:
            if self._epoch == epoch:
                self.last_stats = GenerationStats(
                    prompt_tokens=len(prompt),
                    reused=reused,
                    prefilled=prefilled,
                    generated=generated,
                    ttft_s=ttft,
                    decode_s=decode,
                    tokens_per_s=(generated - 1) / decode if generated > 1 and decode > 0 else 0.0,
                )

    # ------------------------------------------------------------------ batch

    @torch.inference_mode()
    def generate(
        self,
        prompt_tokens: Sequence[Sequence[int]],
        *,
        max_gen_len: int,
        temperature: float = 0.6,
        top_p: float = 0.9,
        logprobs: bool = False,
        echo: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[GenerationResult]:
        """Generate for a batch of prompts of any lengths; one `GenerationResult` per prompt.

        Prompts are left-aligned: decoding starts at the shortest prompt's end, and a longer
        prompt's own tokens are forced until it runs out. Each sequence stops at its first stop
        token or after `max_gen_len` tokens (clipped to the room its prompt leaves). The whole
        batch is checked before any work. This uses the KV cache rows 0..B-1 and so forgets
        what `stream` had cached.
        """
        self._check_max_gen_len(max_gen_len)
        check_sampling_params(temperature, top_p)
        prompts = [list(p) for p in prompt_tokens]
        if not prompts:
            raise UsageError("generate needs at least one prompt")
        if len(prompts) > self.max_batch_size:
            raise UsageError(
                f"{len(prompts)} prompts but the KV cache was built for max_batch_size="
                f"{self.max_batch_size}; pass a larger max_batch_size to Llama.build"
            )
        limits = [self._check_prompt(p, max_gen_len, what=f"prompt {i}") for i, p in enumerate(prompts)]

        self._epoch += 1
        self._cached = []
        bsz = len(prompts)
        device = self.device
        lengths = [len(p) for p in prompts]
        total_len = max(n + g for n, g in zip(lengths, limits, strict=True))
        pad = self.tokenizer.pad_id if 0 <= self.tokenizer.pad_id < self.args.vocab_size else 0
        tokens = torch.full((bsz, total_len), pad, dtype=torch.long, device=device)
        for k, p in enumerate(prompts):
            tokens[k, : len(p)] = torch.tensor(p, dtype=torch.long, device=device)
        is_prompt = torch.zeros((bsz, total_len), dtype=torch.bool, device=device)
        for k, n in enumerate(lengths):
            is_prompt[k, :n] = True
        lp = torch.zeros((bsz, total_len), dtype=torch.float32, device=device) if logprobs else None
        # Only echoed log-probabilities need the prompt's logits; otherwise each pass projects its last
        # position (after the prefill every pass has one position per row anyway).
        last_only = not (logprobs and echo)

        done = [False] * bsz
        stop_at: list[int | None] = [None] * bsz  # index one past the last kept token
        stop_ids = self._stop_ids.to(device)
        prev = 0
        for cur in range(min(lengths), total_len):
            logits = self._run_model(tokens[:, prev:cur], prev, last_only=last_only)
            nxt = sample_next_token(logits[:, -1], temperature=temperature, top_p=top_p, generator=generator)
            nxt = torch.where(is_prompt[:, cur], tokens[:, cur], nxt)
            tokens[:, cur] = nxt
            if lp is not None:
                # Log-probability of tokens[first .. cur] given everything before each: the logits at
                # input positions first-1 .. cur-1 (all of prev .. cur-1, or only the last).
                first = cur + 1 - logits.shape[1]
                lp[:, first : cur + 1] = token_logprobs(logits, tokens[:, first : cur + 1])
            is_stop = torch.isin(nxt, stop_ids).tolist()
            for k in range(bsz):
                if done[k] or cur < lengths[k]:
                    continue
                n_gen = cur - lengths[k] + 1
                if is_stop[k] or n_gen >= limits[k]:
                    done[k] = True
                    stop_at[k] = cur + 1
            prev = cur
            if all(done):
                break

        results = []
        rows = tokens.tolist()
        lp_rows = lp.tolist() if lp is not None else None
        for k in range(bsz):
            n, end = lengths[k], stop_at[k]
            assert end is not None, "every sequence stops by its limit"
            gen = rows[k][n:end]
            last = gen[-1]
            reason = (
                self._stop_reason(last) if last in self.tokenizer.stop_tokens else StopReason.out_of_tokens
            )
            results.append(
                GenerationResult(
                    tokens=gen,
                    stop_reason=reason,
                    logprobs=lp_rows[k][n:end] if lp_rows is not None else None,
                    prompt_tokens=prompts[k] if echo else None,
                    prompt_logprobs=lp_rows[k][:n] if (echo and lp_rows is not None) else None,
                )
            )
        return results

    # ------------------------------------------------------------------ chat

    def chat_completion(
        self,
        messages: Sequence[Message],
        *,
        tool_prompt_format: ToolPromptFormat = ToolPromptFormat.json,
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Message:
        """Encode `messages`, generate the assistant's reply (reusing the cache) and decode it.

        `max_gen_len=None` means as much as the context allows. The returned message keeps the
        generated `tokens`, so appending it to `messages` extends the prompt the cache holds.
        """
        prompt = self.formatter.encode_dialog_prompt(messages, tool_prompt_format)
        if max_gen_len is None:
            max_gen_len = max(self.max_seq_len - len(prompt), 1)
        out = list(
            self.stream(
                prompt, max_gen_len=max_gen_len, temperature=temperature, top_p=top_p, generator=generator
            )
        )
        return self.formatter.decode_assistant_message(out, StopReason.out_of_tokens)

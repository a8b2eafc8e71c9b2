"""The Llama 3.1 Transformer, on fairscale's model-parallel layers, with a fixed-shape KV cache.

What it does: RMSNorm; grouped-query attention through `torch.nn.functional.scaled_dot_product_attention`
with rotary embeddings in Meta's interleaved layout and Llama 3.1's RoPE scaling; a SwiGLU feed-forward;
float32 logits. Linear layers and the embedding are fairscale's `ColumnParallelLinear`,
`RowParallelLinear` and `VocabParallelEmbedding`, so the same code runs model-parallel under torchrun; a
single process needs no set-up (`ensure_model_parallel` starts a world-size-1 group). Parameter names
match Meta's `consolidated.*.pth` exactly.

The KV cache is a `KVCache` module per layer with buffers `[B, n_local_kv_heads, max_seq_len, head_dim]`,
allocated only by `Transformer.setup_cache` and written in place at `start_pos`. Without a cache,
`forward(tokens, 0)` runs plain causal attention (scoring, tests). The RoPE cos/sin table is a float32
buffer that is never saved and is rebuilt whenever the module moves (`.to`, `.to_empty`, `.cuda`), so a
`.to(torch.bfloat16)` never rounds it.

Two ways to run: `forward(tokens, start_pos: int)` (any length, slices the cache; prefill and the eager
path) and `forward_at(tokens, input_pos: Tensor)` (positions given as a device tensor: every shape is
fixed by the cache, so one `torch.compile`d graph, or one CUDA graph, serves every position; the
compiled decode step). Both take `last_only=True` to run the output projection on the last position
only (`[B, 1, vocab]`): sampling needs no more, and a long prompt's logits for every position cost
`T x vocab` floats (4 GB for 8192 tokens) and the largest matmul of the pass. `fuse()` replaces
wq/wk/wv with one `wqkv` matmul and w1/w3 with one `w13` (per model-parallel shard); `state_dict()`
and `load_state_dict()` keep Meta's unfused names. Each layer gets where its tokens sit as one
`Positions` (start position or position tensor, RoPE rows, mask), built once per pass.

Build on `torch.device("meta")` to load a checkpoint without allocating twice (see `checkpoint.py`);
on any other device the weights get a random initialisation (`init_weights`).

What it does not do: sampling or generation loops (`generation.py`), reading files (`checkpoint.py`),
training utilities, quantisation, or vision layers. Decode with the cache under
`torch.inference_mode()`; the cache keeps no autograd history by design.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from fairscale.nn.model_parallel.layers import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from llama_agents.errors import UsageError
from llama_agents.llama._parallel import ensure_model_parallel
from llama_agents.llama.args import ModelArgs
from llama_agents.llama.parallel import check_divisible

__all__ = [
    "Attention",
    "FeedForward",
    "KVCache",
    "Positions",
    "RMSNorm",
    "RotaryEmbedding",
    "Transformer",
    "TransformerBlock",
    "apply_rotary_emb",
    "rope_frequencies",
]

_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def _keep(weight: torch.Tensor) -> torch.Tensor:
    """fairscale init_method that leaves the weight alone (`init_weights` or a checkpoint fills it)."""
    return weight


class _FactoriesOnMeta(TorchDispatchMode):
    """Send every tensor factory call to the meta device.

    fairscale's layers allocate with the legacy `torch.Tensor(rows, cols)` constructor, which ignores the
    `with torch.device(...)` context; this mode catches those allocations too, so building even the 405B
    shapes allocates nothing. Used only inside `_allocate_on_meta()`.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = torch.device("meta")
        return func(*args, **kwargs)


@contextlib.contextmanager
def _allocate_on_meta() -> Iterator[None]:
    with torch.device("meta"), _FactoriesOnMeta():
        yield


def _unsplit(layer: nn.Module) -> bool:
    """Whether this rank holds the whole of a fairscale layer (model-parallel size 1)."""
    if isinstance(layer, VocabParallelEmbedding):
        return layer.weight.shape[0] == layer.num_embeddings
    if isinstance(layer, ColumnParallelLinear):
        return layer.weight.shape[0] == layer.out_features
    if isinstance(layer, RowParallelLinear):
        return layer.weight.shape[1] == layer.in_features
    return False


def _run(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a fairscale layer; when it is not split, as the plain op it then is.

    With one rank fairscale's forward is `F.linear` / `F.embedding` wrapped in autograd Functions that
    are identities, but which `torch.compile` cannot trace (`ctx.mark_dirty`); calling the op directly
    gives the same result and keeps the decode step one graph. Split layers go through fairscale.
    """
    if not _unsplit(layer):
        return layer(x)
    if isinstance(layer, VocabParallelEmbedding):
        return F.embedding(x, layer.weight)
    return F.linear(x, layer.weight)


class _FusedLinear(nn.Module):
    """Several column-parallel projections of one input as one matmul (this rank's rows of each).

    `weight` is the row-wise concatenation of the parts; `forward` returns the parts, split again.
    Inference only: in a model-parallel group the backward all-reduce of `ColumnParallelLinear` is not
    reproduced (the forward is the same: each rank multiplies by its own shard).
    """

    def __init__(self, weights: list[torch.Tensor]) -> None:
        super().__init__()
        self.sizes = [w.shape[0] for w in weights]
        self.in_features = weights[0].shape[1]
        self.weight = nn.Parameter(torch.cat(weights, dim=0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return F.linear(x, self.weight).split(self.sizes, dim=-1)


def _fuse_into(module: nn.Module, parts: tuple[str, ...], fused: str) -> None:
    """Replace `module.<parts>` by one `_FusedLinear` named `fused`; keep the unfused names on disk.

    A state-dict post-hook splits the fused weight back into the parts' names (as views, no copy), and
    a load pre-hook concatenates the parts, so checkpoints saved or loaded after `fuse()` are unchanged.
    """
    weights = [getattr(module, name).weight.detach() for name in parts]
    setattr(module, fused, _FusedLinear(weights))
    for name in parts:
        delattr(module, name)

    def save_unfused(mod: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
        whole = state.pop(prefix + fused + ".weight")
        for name, piece in zip(parts, whole.split(getattr(mod, fused).sizes, dim=0), strict=True):
            state[prefix + name + ".weight"] = piece

    def load_unfused(_mod: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
        keys = [prefix + name + ".weight" for name in parts]
        missing = [k for k in keys if k not in state]
        if not missing:
            state[prefix + fused + ".weight"] = torch.cat([state.pop(k) for k in keys], dim=0)
        elif len(missing) < len(keys):  # some parts only: the fused weight cannot be built
            error_msgs = args[-1]
            error_msgs.append(f"Missing key(s) in state_dict: {', '.join(map(repr, missing))}.")

    module.register_state_dict_post_hook(save_unfused)
    module.register_load_state_dict_pre_hook(load_unfused)


def rope_frequencies(args: ModelArgs, device: torch.device | str | None = None) -> torch.Tensor:
    """The `head_dim // 2` RoPE inverse frequencies (float32), with Llama 3.1 scaling when enabled.

    Scaling: wavelengths shorter than `original_max / high_freq_factor` are kept, longer than
    `original_max / low_freq_factor` are divided by `factor`, and the band between is interpolated.
    """
    hd = args.head_dim
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
    if not args.use_scaled_rope:
        return freqs
    factor, low, high = args.rope_scale_factor, args.rope_low_freq_factor, args.rope_high_freq_factor
    old_len = args.rope_original_max_position
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / factor, freqs)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Float32 cos/sin tables `[max_seq_len, head_dim // 2]`; not saved, rebuilt whenever moved."""

    cos: torch.Tensor
    sin: torch.Tensor

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.register_buffer("cos", torch.empty(args.max_seq_len, args.head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(args.max_seq_len, args.head_dim // 2), persistent=False)

    def rebuild(self, device: torch.device | str | None = None) -> None:
        """Compute the tables on `device` (default: where they are now), in float32."""
        device = torch.device(device) if device is not None else self.cos.device
        if device.type == "meta":
            self.cos = torch.empty(self.cos.shape, device=device)
            self.sin = torch.empty(self.sin.shape, device=device)
            return
        freqs = rope_frequencies(self.args, device)
        t = torch.arange(self.args.max_seq_len, device=device, dtype=torch.float32)
        angles = torch.outer(t, freqs)
        self.cos, self.sin = torch.cos(angles), torch.sin(angles)

    def _apply(self, fn: Any, recurse: bool = True) -> RotaryEmbedding:
        super()._apply(fn, recurse)
        self.rebuild()  # back to float32, with real values after to_empty()
        return self


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x [B, T, H, head_dim]` in Meta's interleaved layout (pairs `(2i, 2i+1)`), in float32."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and cast back, then scaled by `weight`."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class KVCache(nn.Module):
    """Fixed-shape key/value buffers `[max_batch_size, n_kv_heads, max_seq_len, head_dim]` for one layer."""

    k: torch.Tensor
    v: torch.Tensor

    def __init__(
        self,
        max_batch_size: int,
        n_kv_heads: int,
        max_seq_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        shape = (max_batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    @property
    def max_batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def update(
        self, start_pos: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write `k, v [B, n_kv_heads, T, head_dim]` at positions `start_pos..start_pos+T-1`.

        With an int `start_pos`, returns views of keys and values for positions `0..start_pos+T-1` of
        the first `B` rows. With a `[T]` long tensor of positions (on the cache's device), writes there
        and returns the first `B` rows at full length (fixed shapes; the caller masks positions not yet
        written). Tensor positions are not range-checked: that would synchronise with the device.
        """
        bsz, _, seqlen, _ = k.shape
        if isinstance(start_pos, torch.Tensor):
            self.k[:bsz].index_copy_(2, start_pos, k)
            self.v[:bsz].index_copy_(2, start_pos, v)
            return self.k[:bsz], self.v[:bsz]
        end = start_pos + seqlen
        if bsz > self.max_batch_size or end > self.max_seq_len or start_pos < 0:
            raise UsageError(
                f"KV cache holds {self.max_batch_size} sequences of {self.max_seq_len} positions; cannot "
                f"write {bsz} x positions {start_pos}..{end - 1} (call setup_cache with larger sizes)"
            )
        self.k[:bsz, :, start_pos:end] = k
        self.v[:bsz, :, start_pos:end] = v
        return self.k[:bsz, :, :end], self.v[:bsz, :, :end]


class Positions(NamedTuple):
    """Where one forward pass's tokens sit, as every layer's attention needs it.

    start_pos: the first position (an int: the cache is sliced) or every position (a `[T]` long tensor:
    fixed shapes, see `KVCache.update`). cos/sin: the RoPE rows for those positions. mask/is_causal:
    what SDPA is given (a boolean `[T, keys]` mask, or a plain causal pass, or neither for one token).
    """

    start_pos: int | torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    is_causal: bool


class Attention(nn.Module):
    """Grouped-query self-attention; this rank holds `n_heads / mp` query and `n_kv_heads / mp` kv heads."""

    def __init__(self, args: ModelArgs, model_parallel_size: int) -> None:
        super().__init__()
        self.head_dim = args.head_dim
        self.n_local_heads = args.n_heads // model_parallel_size
        # Fewer KV heads than ranks: each rank holds one, replicated (see parallel.stored_kv_heads).
        n_kv_stored = max(args.n_kv_heads, model_parallel_size)
        self.n_local_kv_heads = n_kv_stored // model_parallel_size
        self.n_rep = self.n_local_heads // self.n_local_kv_heads
        hd = self.head_dim
        self.wq = ColumnParallelLinear(
            args.dim, args.n_heads * hd, bias=False, gather_output=False, init_method=_keep
        )
        self.wk = ColumnParallelLinear(
            args.dim, n_kv_stored * hd, bias=False, gather_output=False, init_method=_keep
        )
        self.wv = ColumnParallelLinear(
            args.dim, n_kv_stored * hd, bias=False, gather_output=False, init_method=_keep
        )
        self.wo = RowParallelLinear(
            args.n_heads * hd, args.dim, bias=False, input_is_parallel=True, init_method=_keep
        )
        self.kv_cache: KVCache | None = None
        self.wqkv: _FusedLinear | None = None

    def fuse(self) -> None:
        """Replace wq, wk, wv by one `wqkv` matmul (this rank's shards). Idempotent."""
        if self.wqkv is None:
            _fuse_into(self, ("wq", "wk", "wv"), "wqkv")

    def forward(self, x: torch.Tensor, where: Positions) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        if self.wqkv is not None:
            q, k, v = self.wqkv(x)
        else:
            q, k, v = _run(self.wq, x), _run(self.wk, x), _run(self.wv, x)
        q = q.view(bsz, seqlen, self.n_local_heads, self.head_dim)
        k = k.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        v = v.view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        q, k = apply_rotary_emb(q, where.cos, where.sin), apply_rotary_emb(k, where.cos, where.sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(where.start_pos, k, v)
            q = q.to(k.dtype)
        mask, is_causal = where.mask, where.is_causal
        if self.n_rep == 1:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        elif _SDPA_HAS_GQA:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True
            )
        else:  # pragma: no cover - torch < 2.5
            k = k.repeat_interleave(self.n_rep, dim=1)
            v = v.repeat_interleave(self.n_rep, dim=1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(bsz, seqlen, -1).to(x.dtype)
        return _run(self.wo, out)


class FeedForward(nn.Module):
    """SwiGLU: `w2(silu(w1(x)) * w3(x))`."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = ColumnParallelLinear(dim, hidden_dim, bias=False, gather_output=False, init_method=_keep)
        self.w2 = RowParallelLinear(hidden_dim, dim, bias=False, input_is_parallel=True, init_method=_keep)
        self.w3 = ColumnParallelLinear(dim, hidden_dim, bias=False, gather_output=False, init_method=_keep)
        self.w13: _FusedLinear | None = None

    def fuse(self) -> None:
        """Replace w1, w3 by one `w13` matmul (this rank's shards). Idempotent."""
        if self.w13 is None:
            _fuse_into(self, ("w1", "w3"), "w13")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            gate, up = self.w13(x)
        else:
            gate, up = _run(self.w1, x), _run(self.w3, x)
        return _run(self.w2, F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: attention then feed-forward."""

    def __init__(self, layer_id: int, args: ModelArgs, model_parallel_size: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args, model_parallel_size)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x: torch.Tensor, where: Positions) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), where)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The Llama 3.1 decoder. `forward(tokens [B, T], start_pos) -> float32 logits [B, T, vocab]`.

    `last_only=True` (on `forward` and `forward_at`) projects only the last position: `[B, 1, vocab]`.
    """

    def __init__(
        self,
        args: ModelArgs,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        mp = ensure_model_parallel()
        check_divisible(args, mp)
        self.args = args
        self.model_parallel_size = mp
        device = torch.device(device) if device is not None else torch.device("cpu")
        with _allocate_on_meta():
            self.tok_embeddings = VocabParallelEmbedding(args.vocab_size, args.dim, init_method=_keep)
            self.layers = nn.ModuleList(TransformerBlock(i, args, mp) for i in range(args.n_layers))
            self.norm = RMSNorm(args.dim, eps=args.norm_eps)
            self.output = ColumnParallelLinear(args.dim, args.vocab_size, bias=False, init_method=_keep)
            self.rope = RotaryEmbedding(args)
        if dtype is not None:
            self.to(dtype=dtype)
        if device.type != "meta":
            self.to_empty(device=device)
            self.init_weights()

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.output.weight.dtype

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random weights: embeddings N(0, 1), linear layers N(0, 1/fan_in), norms 1."""
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
                continue
            if isinstance(module, VocabParallelEmbedding):
                std = 1.0
            elif isinstance(module, (ColumnParallelLinear, RowParallelLinear, _FusedLinear)):
                std = module.in_features**-0.5
            else:
                continue
            w = module.weight
            gen_device = generator.device if generator is not None else w.device
            noise = torch.empty(w.shape, device=gen_device, dtype=torch.float32).normal_(
                0.0, std, generator=generator
            )
            w.copy_(noise)

    def setup_cache(
        self,
        max_batch_size: int,
        max_seq_len: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Allocate (or re-allocate, zeroed) every layer's KV cache; default device/dtype: the weights'."""
        if max_batch_size <= 0 or max_seq_len <= 0:
            raise UsageError(f"setup_cache needs positive sizes, got {max_batch_size=} {max_seq_len=}")
        if max_seq_len > self.args.max_seq_len:
            raise UsageError(
                f"max_seq_len={max_seq_len} exceeds the model's context ({self.args.max_seq_len} positions); "
                "build the model with ModelArgs.max_seq_len raised"
            )
        device = device if device is not None else self.device
        dtype = dtype if dtype is not None else self.dtype
        for layer in self.layers:
            attn = layer.attention
            attn.kv_cache = KVCache(
                max_batch_size, attn.n_local_kv_heads, max_seq_len, attn.head_dim, device=device, dtype=dtype
            )

    def fuse(self) -> Transformer:
        """Fuse each layer's q/k/v and gate/up projections into one matmul each; returns `self`.

        Works per model-parallel shard (each rank concatenates its own rows), is idempotent, and
        leaves `state_dict()` / `load_state_dict()` with Meta's unfused names. Call after loading.
        """
        for layer in self.layers:
            layer.attention.fuse()
            layer.feed_forward.fuse()
        return self

    @property
    def fused(self) -> bool:
        """Whether `fuse()` has been applied."""
        return bool(len(self.layers)) and self.layers[0].attention.wqkv is not None

    def clear_cache(self) -> None:
        """Drop the KV caches (frees their memory); `forward` then runs without a cache."""
        for layer in self.layers:
            layer.attention.kv_cache = None

    @property
    def cache(self) -> KVCache | None:
        """The first layer's cache (all layers share its shape), or None."""
        return self.layers[0].attention.kv_cache if len(self.layers) else None

    def forward(self, tokens: torch.Tensor, start_pos: int = 0, *, last_only: bool = False) -> torch.Tensor:
        """`tokens [B, T]` at positions `start_pos..start_pos+T-1` -> float32 logits `[B, T, vocab]`.

        `last_only=True` projects only the last position to the vocabulary and returns `[B, 1, vocab]`
        (the same values as the full pass's last row): what sampling the next token needs, without
        the output matmul and the `T x vocab` logits for every other position.
        """
        if tokens.dim() != 2:
            raise UsageError(f"tokens must be [batch, seq], got shape {tuple(tokens.shape)}")
        _bsz, seqlen = tokens.shape
        if start_pos < 0 or start_pos + seqlen > self.args.max_seq_len:
            raise UsageError(
                f"positions {start_pos}..{start_pos + seqlen - 1} exceed the model's context "
                f"({self.args.max_seq_len})"
            )
        if start_pos != 0 and self.cache is None:
            raise UsageError("start_pos > 0 needs a KV cache holding the earlier positions: call setup_cache")
        mask: torch.Tensor | None = None
        if (
            seqlen > 1 and start_pos != 0
        ):  # query i sits at position start_pos + i, sees keys 0..start_pos + i
            mask = torch.ones(seqlen, start_pos + seqlen, dtype=torch.bool, device=tokens.device)
            mask = mask.tril(diagonal=start_pos)
        cos = self.rope.cos[start_pos : start_pos + seqlen]
        sin = self.rope.sin[start_pos : start_pos + seqlen]
        where = Positions(start_pos, cos, sin, mask, is_causal=seqlen > 1 and start_pos == 0)
        return self._logits(tokens, where, last_only)

    def forward_at(
        self, tokens: torch.Tensor, input_pos: torch.Tensor, *, last_only: bool = False
    ) -> torch.Tensor:
        """`tokens [B, T]` at positions `input_pos [T]` (a long tensor on the model's device) -> logits.

        Every shape is fixed by the KV cache, whatever the positions: the attention runs over the
        whole cache with a mask derived from `input_pos` (position p sees keys 0..p), so one compiled
        graph serves every step of a decode. Needs `setup_cache`; positions are not range-checked
        (that would synchronise with the device), so keep them below the cache length. `last_only`
        as in `forward`.
        """
        if self.cache is None:
            raise UsageError("forward_at needs a KV cache: call setup_cache")
        if tokens.dim() != 2 or input_pos.dim() != 1 or input_pos.shape[0] != tokens.shape[1]:
            raise UsageError(
                f"forward_at needs tokens [batch, seq] and input_pos [seq], got shapes "
                f"{tuple(tokens.shape)} and {tuple(input_pos.shape)}"
            )
        keys = torch.arange(self.cache.max_seq_len, device=input_pos.device)
        mask = keys[None, :] <= input_pos[:, None]  # [T, cache_len]
        cos = self.rope.cos.index_select(0, input_pos)
        sin = self.rope.sin.index_select(0, input_pos)
        return self._logits(tokens, Positions(input_pos, cos, sin, mask, is_causal=False), last_only)

    def _logits(self, tokens: torch.Tensor, where: Positions, last_only: bool) -> torch.Tensor:
        """Embed, run every layer (each writes its cache), then norm and project the positions asked for."""
        h = _run(self.tok_embeddings, tokens)
        for layer in self.layers:
            h = layer(h, where)
        if last_only:
            h = h[:, -1:]  # the norm is per position: slicing first changes no value
        return _run(self.output, self.norm(h)).float()

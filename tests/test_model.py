"""Tests for llama_agents.llama.model: the Transformer against the reference, the KV cache, RoPE scaling.

All on CPU in float32 with the `tiny` preset (real vocabulary, GQA, Llama 3.1 RoPE scaling).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from llama_models.llama3 import args as ref_args
from llama_models.llama3 import model as ref_model
from torch.overrides import TorchFunctionMode
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from llama_agents.errors import UsageError
from llama_agents.llama._parallel import ensure_model_parallel
from llama_agents.llama.args import PRESETS
from llama_agents.llama.model import KVCache, Transformer, rope_frequencies

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(TINY.replace(max_seq_len=512))
    m.eval()
    return m


def _tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_single_process_needs_no_distributed_setup():
    assert ensure_model_parallel() == 1
    assert ensure_model_parallel() == 1  # idempotent
    assert torch.distributed.is_initialized()


def test_rope_frequencies_match_the_reference_and_hugging_face():
    ours = rope_frequencies(TINY)
    hd = TINY.head_dim
    base = 1.0 / (TINY.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    torch.testing.assert_close(ours, ref_model.apply_scaling(base), rtol=0, atol=0)
    config = LlamaConfig(
        hidden_size=TINY.dim,
        num_attention_heads=TINY.n_heads,
        max_position_embeddings=TINY.max_seq_len,
        rope_theta=TINY.rope_theta,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    hf_inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    torch.testing.assert_close(ours, hf_inv_freq.float(), rtol=1e-6, atol=0)
    # head_dim 16 spans all three bands: kept, interpolated and divided by 8
    ratio = (base / ours).tolist()
    assert ratio[0] == 1.0 and ratio[-1] == pytest.approx(8.0) and any(1.01 < r < 7.99 for r in ratio)
    assert torch.equal(rope_frequencies(TINY.replace(use_scaled_rope=False)), base)


def test_logits_equal_the_reference_transformer(model):
    params = {**TINY.to_params(), "max_batch_size": 2, "max_seq_len": 64}
    ref = ref_model.Transformer(ref_args.ModelArgs(**params))
    ref.load_state_dict(model.state_dict(), strict=True)
    tokens = _tokens(2, 40)
    expected = ref(tokens, 0)
    got = model(tokens, 0)
    assert got.dtype == torch.float32 and got.shape == (2, 40, TINY.vocab_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    # the reference's cached path too: continue from position 40 one token at a time
    more = _tokens(2, 3, seed=1)
    model.setup_cache(2, 64)
    model(tokens, 0)
    for i in range(3):
        torch.testing.assert_close(
            model(more[:, i : i + 1], 40 + i), ref(more[:, i : i + 1], 40 + i), atol=1e-4, rtol=0
        )
    model.clear_cache()


def test_cached_decoding_equals_recomputing_the_whole_sequence(model):
    tokens = _tokens(2, 30, seed=2)
    full = model(tokens, 0)
    model.setup_cache(2, 64)
    pieces = [model(tokens[:, :9], 0), model(tokens[:, 9:20], 9)]  # prefill, then a prefill at an offset
    pieces += [model(tokens[:, i : i + 1], i) for i in range(20, 30)]  # then one token at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-4)
    # a batch smaller than the cache reuses its first rows
    torch.testing.assert_close(model(tokens[:1, :5], 0), full[:1, :5], rtol=0, atol=1e-4)
    model.clear_cache()


def test_causality_and_batch_independence(model):
    tokens = _tokens(2, 12, seed=3)
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % TINY.vocab_size
    a, b = model(tokens, 0), model(changed, 0)
    torch.testing.assert_close(a[0, :8], b[0, :8], rtol=0, atol=1e-5)  # the past does not see the future
    assert (a[0, 8:] - b[0, 8:]).abs().max() > 1e-2
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=1e-5)  # rows do not mix


def test_kv_cache_is_fixed_shape_allocated_by_setup_cache_and_never_saved(model):
    m = Transformer(TINY.replace(max_seq_len=128))
    assert m.cache is None
    assert all(layer.attention.kv_cache is None for layer in m.layers)
    m.setup_cache(3, 100, dtype=torch.bfloat16)
    cache = m.layers[1].attention.kv_cache
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (3, TINY.n_kv_heads, 100, TINY.head_dim) and cache.k.dtype == torch.bfloat16
    assert set(m.state_dict()) == set(model.state_dict())
    assert not any("cache" in k or "rope" in k for k in m.state_dict())
    m(_tokens(1, 4), 0)
    assert cache.k[0, :, :4].abs().sum() > 0 and cache.k[0, :, 4:].abs().sum() == 0


def test_usage_errors_name_the_problem(model):
    with pytest.raises(UsageError, match="needs a KV cache"):
        model(_tokens(1, 2), 5)
    with pytest.raises(UsageError, match=r"\[batch, seq\]"):
        model(torch.zeros(4, dtype=torch.long), 0)
    with pytest.raises(UsageError, match="exceeds the model's context"):
        model.setup_cache(1, 10_000)
    model.setup_cache(1, 16)
    with pytest.raises(UsageError, match="setup_cache with larger sizes"):
        model(_tokens(1, 4), 14)
    with pytest.raises(UsageError, match="setup_cache with larger sizes"):
        model(_tokens(2, 4), 0)
    model.clear_cache()


def test_meta_build_allocates_nothing_even_for_405b():
    m = Transformer(PRESETS["llama3.1-405b"], device="meta", dtype=torch.bfloat16)
    params = list(m.parameters())
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in params)
    assert sum(p.numel() for p in params) == 405_853_388_800
    assert m.rope.cos.device.type == "meta"


def test_casting_keeps_rope_in_float32_and_logits_float32(model):
    m = Transformer(TINY.replace(max_seq_len=64))
    m.load_state_dict(model.state_dict())
    m.to(torch.bfloat16)
    assert m.dtype == torch.bfloat16
    assert m.rope.cos.dtype == torch.float32
    torch.testing.assert_close(m.rope.cos, torch.cos(torch.outer(torch.arange(64.0), rope_frequencies(TINY))))
    tokens = _tokens(1, 10)
    out = m(tokens, 0)
    assert out.dtype == torch.float32
    # bf16 weights: close to float32, not equal
    ref = model(tokens, 0)
    assert (out - ref).abs().max() < 0.5 and not torch.equal(out, ref)


def test_init_weights_is_seeded():
    a, b = Transformer(TINY.replace(max_seq_len=8)), Transformer(TINY.replace(max_seq_len=8))
    a.init_weights(torch.Generator().manual_seed(1))
    b.init_weights(torch.Generator().manual_seed(1))
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert torch.equal(a.norm.weight, torch.ones(TINY.dim))
    assert a.layers[0].attention.wq.weight.std().item() == pytest.approx(TINY.dim**-0.5, rel=0.05)


class _OutputProjectionShapes(TorchFunctionMode):
    """Records the input shape of each `F.linear` by the output weight (the vocabulary projection)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight
        self.shapes: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear and args[1] is self.weight:
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def test_last_only_projects_one_position_and_equals_the_full_pass(model):
    tokens = _tokens(2, 24, seed=7)
    full = model(tokens, 0)
    with _OutputProjectionShapes(model.output.weight) as seen:
        last = model(tokens, 0, last_only=True)
    assert seen.shapes == [(2, 1, TINY.dim)]  # the vocabulary matmul ran on one position per row
    assert last.shape == (2, 1, TINY.vocab_size) and last.dtype == torch.float32
    # Not bit-equal: BLAS picks another kernel for one row (float32 rounding, ~1e-5 on logits ~10).
    torch.testing.assert_close(last, full[:, -1:], rtol=0, atol=1e-4)
    assert torch.equal(last.argmax(-1), full[:, -1:].argmax(-1))
    # with the cache: a prefill at an offset, and the fixed-shape forward_at
    model.setup_cache(2, 64)
    model(tokens[:, :10], 0)
    with _OutputProjectionShapes(model.output.weight) as seen:
        suffix = model(tokens[:, 10:], 10, last_only=True)
        at = model.forward_at(tokens[:, 10:], torch.arange(10, 24), last_only=True)
    model.clear_cache()
    assert seen.shapes == [(2, 1, TINY.dim)] * 2
    torch.testing.assert_close(suffix, full[:, -1:], rtol=0, atol=1e-4)
    torch.testing.assert_close(at, full[:, -1:], rtol=0, atol=1e-4)

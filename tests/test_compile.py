"""Tests for the fast decode path: fused projections, `forward_at`, and the compiled decode step.

Everything runs on CPU with a tiny random checkpoint written by our own writer and the real Llama 3
tokenizer; `torch.compile` uses inductor's CPU backend here (CUDA graphs are for the GPU check in
`tools/gpu_check.sh`). One compiled `Llama` serves the whole module, so compilation is paid once.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from llama_agents.errors import UsageError
from llama_agents.llama._decode import COMPILE_ENV, CompileStats, resolve_compile
from llama_agents.llama.args import PRESETS
from llama_agents.llama.generation import Llama
from llama_agents.llama.model import Transformer

CPU = torch.device("cpu")
CUDA = torch.device("cuda")
# tools/gpu_check.sh sets this to "cuda": the compiled pair then runs with CUDA graphs
DEVICE = torch.device(os.environ.get("LLAMA_AGENTS_TEST_DEVICE", "cpu"))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny(seed: int = 0) -> Transformer:
    model = Transformer(PRESETS["tiny"], device="cpu", dtype=torch.float32)
    model.init_weights(_gen(seed))
    return model.eval()


def _prompt(seed: int, n: int) -> list[int]:
    return [128000, *torch.randint(0, 128000, (n - 1,), generator=_gen(seed)).tolist()]


# ------------------------------------------------------------------------------------- fusion


@torch.inference_mode()
def test_fused_projections_give_the_same_logits_with_and_without_a_cache():
    plain = _tiny(1)
    fused = copy.deepcopy(plain).fuse()
    assert fused.fused and not plain.fused
    attn, ffn = fused.layers[0].attention, fused.layers[0].feed_forward
    assert not hasattr(attn, "wq") and not hasattr(ffn, "w1")
    assert tuple(attn.wqkv.weight.shape) == (64 + 2 * 32, 64)  # 4 query heads + 2 + 2 kv heads of 16
    tokens = torch.tensor([_prompt(1, 9)])
    torch.testing.assert_close(fused(tokens, 0), plain(tokens, 0), atol=1e-5, rtol=0)
    for m in (plain, fused):
        m.setup_cache(1, 16)
    a = [plain(tokens[:, :6], 0)[:, -1], plain(tokens[:, 6:7], 6)[:, -1]]
    b = [fused(tokens[:, :6], 0)[:, -1], fused(tokens[:, 6:7], 6)[:, -1]]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_a_fused_model_saves_and_loads_the_unfused_checkpoint_names():
    plain = _tiny(2)
    fused = copy.deepcopy(plain).fuse().fuse()  # idempotent
    saved = fused.state_dict()
    assert saved.keys() == plain.state_dict().keys()
    assert "layers.1.attention.wk.weight" in saved and "layers.1.feed_forward.w3.weight" in saved
    for name, tensor in plain.state_dict().items():
        assert torch.equal(saved[name], tensor), name
    # an unfused state dict (a checkpoint) loads into a fused model, strictly, and into a meta one
    other = _tiny(3).fuse()
    other.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(other.layers[0].attention.wqkv.weight, fused.layers[0].attention.wqkv.weight)
    meta = Transformer(PRESETS["tiny"], device="meta").fuse()
    meta.load_state_dict(plain.state_dict(), strict=True, assign=True)
    assert torch.equal(meta.layers[1].feed_forward.w13.weight, fused.layers[1].feed_forward.w13.weight)
    with pytest.raises(RuntimeError, match=r"layers\.0\.attention\.wv\.weight"):
        broken = dict(plain.state_dict())
        del broken["layers.0.attention.wv.weight"]
        _tiny(4).fuse().load_state_dict(broken, strict=True)


# ---------------------------------------------------------------------------------- forward_at


@torch.inference_mode()
def test_forward_at_with_tensor_positions_equals_the_sliced_cache_path():
    model = _tiny(5).fuse()
    model.setup_cache(2, 24)
    ref = _tiny(5).fuse()
    ref.setup_cache(2, 24)
    tokens = torch.tensor([_prompt(6, 12), _prompt(7, 12)])
    # prefill 5 at 0, then 4 at positions 5..8 as one tensor step, then single tokens
    model(tokens[:, :5], 0)
    ref(tokens[:, :5], 0)
    got = model.forward_at(tokens[:, 5:9], torch.arange(5, 9))
    want = ref(tokens[:, 5:9], 5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    for pos in range(9, 12):
        got = model.forward_at(tokens[:, pos : pos + 1], torch.tensor([pos]))
        want = ref(tokens[:, pos : pos + 1], pos)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the cache rows hold the same keys for every written position
    torch.testing.assert_close(model.cache.k[:, :, :12], ref.cache.k[:, :, :12], atol=1e-5, rtol=0)


def test_forward_at_needs_a_cache_and_matching_shapes():
    model = _tiny(8)
    with pytest.raises(UsageError, match="setup_cache"):
        model.forward_at(torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]))
    model.setup_cache(1, 8)
    with pytest.raises(UsageError, match="input_pos"):
        model.forward_at(torch.zeros(1, 2, dtype=torch.long), torch.tensor([0]))


# ----------------------------------------------------------------------------- the switch


def test_resolve_compile_argument_then_environment_then_device(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert resolve_compile(None, CUDA) == (True, "CUDA device")
    assert resolve_compile(None, CPU) == (False, "not CUDA")
    monkeypatch.setenv(COMPILE_ENV, "1")
    assert resolve_compile(None, CPU) == (True, f"{COMPILE_ENV}=1")
    assert resolve_compile(False, CPU) == (False, "argument")
    monkeypatch.setenv(COMPILE_ENV, "0")
    assert resolve_compile(None, CUDA) == (False, f"{COMPILE_ENV}=0")
    assert resolve_compile(True, CUDA) == (True, "argument")
    monkeypatch.setenv(COMPILE_ENV, "maybe")
    with pytest.raises(UsageError, match=COMPILE_ENV):
        resolve_compile(None, CPU)
    with pytest.raises(UsageError, match="compile must be"):
        resolve_compile("yes", CPU)  # type: ignore[arg-type]
    assert resolve_compile(None, CUDA, model_parallel_size=2) == (False, "model parallel")
    with pytest.raises(UsageError, match="model parallel"):
        resolve_compile(True, CUDA, model_parallel_size=2)


def test_an_eager_llama_on_cpu_reports_that_it_is_not_compiled(tokenizer, monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    model = _tiny(9)
    model.setup_cache(1, 16)
    llama = Llama(model, tokenizer, max_seq_len=16)
    assert llama.compile_stats == CompileStats(enabled=False, reason="not CUDA")


# ----------------------------------------------------------------------- the compiled path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_path):
    from llama_agents.llama.checkpoint import write_random_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    return write_random_checkpoint(
        root / "meta", "tiny", layout="meta", seed=11, dtype=torch.float32, tokenizer_path=tokenizer_path
    )


@pytest.fixture(scope="module")
def pair(checkpoint) -> tuple[Llama, Llama]:
    """The same checkpoint built compiled and eager (both fused, as `build` does)."""
    kw = {"max_seq_len": 64, "device": DEVICE, "dtype": torch.float32, "progress": False}
    compiled = Llama.build(checkpoint, compile=True, **kw)
    eager = Llama.build(checkpoint, compile=False, **kw)
    return compiled, eager


def test_build_compiles_once_and_reports_it(pair):
    compiled, eager = pair
    stats = compiled.compile_stats
    assert stats.enabled and stats.reason == "argument" and stats.warmup_s > 0
    assert stats.mode == ("reduce-overhead" if DEVICE.type == "cuda" else None)
    assert eager.compile_stats == CompileStats(enabled=False, reason="argument")
    assert compiled.model.fused and eager.model.fused
    assert compiled.cached_tokens == []  # the warm-up leaves nothing claimed in the cache


def test_compiled_greedy_tokens_equal_eager_including_a_cache_reuse_step(pair):
    compiled, eager = pair
    turn1 = _prompt(12, 10)
    assert compiled._decode is not None and eager._decode is None
    calls = compiled._decode.calls
    outs = []
    for llama in pair:
        llama.reset_cache()
        first = list(llama.stream(turn1, max_gen_len=12, temperature=0))
        # the next agent step: the whole first exchange plus new tokens; only the new ones are prefilled
        turn2 = turn1 + first + _prompt(13, 6)[1:]
        second = list(llama.stream(turn2, max_gen_len=12, temperature=0))
        stats = llama.last_stats
        # the last generated token was never fed, so it is prefilled with the 5 new ones
        assert stats is not None and stats.reused == len(turn1) + len(first) - 1
        assert stats.prefilled == 6 and stats.generated == len(second)
        outs.append((first, second))
    assert outs[0] == outs[1]
    assert compiled._decode.calls == calls + 2 * 11  # every decode step of both turns was compiled
    assert len(outs[0][0]) == 12 and len(outs[0][1]) == 12
    # and a cold start of the second prompt on the compiled path gives the same tokens again
    compiled.reset_cache()
    turn2 = turn1 + outs[0][0] + _prompt(13, 6)[1:]
    assert list(compiled.stream(turn2, max_gen_len=12, temperature=0)) == outs[0][1]


def test_compiled_seeded_sampling_and_batch_generate_equal_eager(pair):
    prompt = _prompt(14, 7)
    sampled = [
        list(llama.stream(prompt, max_gen_len=10, temperature=0.8, top_p=0.95, generator=_gen(5)))
        for llama in pair
    ]
    assert sampled[0] == sampled[1]
    results = [llama.generate([prompt], max_gen_len=8, temperature=0, logprobs=True)[0] for llama in pair]
    assert results[0].tokens == results[1].tokens
    assert results[0].logprobs == pytest.approx(results[1].logprobs, abs=1e-4)

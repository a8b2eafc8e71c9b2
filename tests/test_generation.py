"""Tests for llama_agents.llama.generation (and its private _sampling helpers).

Sampling is checked against the reference `sample_top_p`; the generator runs a tiny random
checkpoint written by our own checkpoint writer, in float32 on CPU, with the real Llama 3 tokenizer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import llama_models
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from llama_agents.errors import PromptTooLongError, UsageError
from llama_agents.llama._sampling import (
    check_sampling_params,
    sample_next_token,
    sample_top_p,
    token_logprobs,
)
from llama_agents.llama.args import PRESETS
from llama_agents.llama.generation import Llama
from llama_agents.llama.model import Transformer
from llama_agents.llama.tokenizer import Tokenizer
from llama_agents.types import Message, StopReason

# ---------------------------------------------------------------------------------------- sampling


def _reference_sample_top_p():
    # The reference module imports torchvision at import time; take just this function from its source.
    path = Path(llama_models.__file__).parent / "llama3" / "generation.py"
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "sample_top_p")
    namespace: dict = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["sample_top_p"]


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_temperature_zero_is_argmax_and_uses_no_randomness():
    logits = torch.randn(3, 50, generator=_gen(1))
    g = _gen(7)
    state = g.get_state()
    out = sample_next_token(logits, temperature=0, top_p=0.9, generator=g)
    assert out.tolist() == logits.argmax(-1).tolist()
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("temperature", [1e-6, 1e-39, 5e-324])
def test_a_tiny_positive_temperature_samples_the_argmax(temperature):
    # logits / 1e-39 overflows float32 to inf (softmax NaN, multinomial raised): it must act as greedy
    logits = torch.randn(3, 500, generator=_gen(9)) * 5
    out = sample_next_token(logits, temperature=temperature, top_p=0.9, generator=_gen(1))
    assert out.tolist() == logits.argmax(-1).tolist()


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = torch.randn(4, 1000, generator=_gen(2))
    draws = [
        [sample_next_token(logits, temperature=1.0, top_p=1.0, generator=g).tolist() for _ in range(20)]
        for g in (_gen(3), _gen(3), _gen(4))
    ]
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


def test_top_p_keeps_only_the_nucleus_with_renormalised_mass():
    # Sorted probs 0.5, 0.3, 0.15, 0.05 (shuffled in the vocabulary); p=0.7 keeps {0.5, 0.3}: the
    # mass before 0.15 is already 0.8 > 0.7.
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3]).expand(20000, 4).contiguous()
    drawn = sample_top_p(probs, 0.7, _gen(5)).reshape(-1)
    counts = torch.bincount(drawn, minlength=4).tolist()
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1] / 20000 - 0.5 / 0.8) < 0.02
    # the input is not modified
    assert probs[0].tolist() == pytest.approx([0.15, 0.5, 0.05, 0.3])


def test_tiny_top_p_is_greedy_and_top_p_matches_reference():
    logits = torch.randn(6, 300, generator=_gen(6))
    out = sample_next_token(logits, temperature=0.8, top_p=1e-9, generator=_gen(1))
    assert out.tolist() == logits.argmax(-1).tolist()
    probs = torch.softmax(logits / 0.8, dim=-1)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        ref = _reference_sample_top_p()(probs.clone(), 0.9)
    with torch.random.fork_rng():
        torch.manual_seed(11)
        ours = sample_top_p(probs, 0.9)
    assert ours.tolist() == ref.tolist()


@pytest.mark.parametrize(
    ("temperature", "top_p"),
    [(-0.1, 0.9), (float("nan"), 0.9), (float("inf"), 0.9), (0.7, 0.0), (0.7, 1.5), (0.7, float("nan"))],
)
def test_bad_sampling_params_are_usage_errors(temperature, top_p):
    with pytest.raises(UsageError):
        check_sampling_params(temperature, top_p)
    with pytest.raises(UsageError):
        sample_next_token(torch.zeros(1, 4), temperature=temperature, top_p=top_p)


def test_token_logprobs_are_log_softmax_at_the_token():
    logits = torch.randn(2, 3, 10, generator=_gen(8))
    toks = torch.tensor([[1, 2, 3], [9, 0, 5]])
    lp = token_logprobs(logits, toks)
    ref = torch.log_softmax(logits, -1)
    assert lp.shape == (2, 3)
    assert lp[1, 0].item() == pytest.approx(ref[1, 0, 9].item())
    assert (lp <= 0).all()


# --------------------------------------------------------------------------------------- generator

MAX_SEQ_LEN = 96


def _tiny_model(seed: int = 0, max_seq_len: int = MAX_SEQ_LEN) -> Transformer:
    model = Transformer(PRESETS["tiny"], device="cpu", dtype=torch.float32)
    model.init_weights(_gen(seed))
    model.eval()
    return model


def _make_llama(model: Transformer, tokenizer: Tokenizer, *, max_batch_size: int = 1) -> Llama:
    model.setup_cache(max_batch_size, MAX_SEQ_LEN)
    return Llama(model, tokenizer, max_seq_len=MAX_SEQ_LEN, max_batch_size=max_batch_size)


@pytest.fixture(scope="module")
def llama(tokenizer) -> Llama:
    return _make_llama(_tiny_model(), tokenizer, max_batch_size=3)


@pytest.fixture(scope="module")
def uncached_model(llama) -> Transformer:
    """The same weights, without a KV cache: every call recomputes the whole sequence."""
    model = Transformer(PRESETS["tiny"], device="cpu", dtype=torch.float32)
    model.load_state_dict(llama.model.state_dict())
    model.eval()
    return model


def _prompt(seed: int, n: int) -> list[int]:
    # <|begin_of_text|> then ordinary BPE ids
    return [128000, *torch.randint(0, 128000, (n - 1,), generator=_gen(seed)).tolist()]


def _cold(llama: Llama, prompt: list[int], **kw) -> list[int]:
    llama.reset_cache()
    return list(llama.stream(prompt, **kw))


@torch.inference_mode()
def _recompute_greedy(model: Transformer, prompt: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    seq, out, logits = list(prompt), [], []
    for _ in range(n):
        last = model(torch.tensor([seq]), 0)[0, -1]
        tok = int(last.argmax())
        seq.append(tok)
        out.append(tok)
        logits.append(last)
    return out, logits


def test_cached_streaming_equals_recomputing_the_whole_sequence(llama, uncached_model):
    prompt = _prompt(1, 11)
    streamed = _cold(llama, prompt, max_gen_len=24, temperature=0)
    expected, _ = _recompute_greedy(uncached_model, prompt, 24)
    assert streamed == expected
    stats = llama.last_stats
    assert (stats.prompt_tokens, stats.reused, stats.prefilled, stats.generated) == (11, 0, 11, 24)
    assert stats.ttft_s > 0 and stats.decode_s > 0 and stats.tokens_per_s > 0


def test_logprobs_match_a_full_forward(llama, uncached_model):
    prompt = _prompt(2, 9)
    [res] = llama.generate([prompt], max_gen_len=6, temperature=0, logprobs=True, echo=True)
    with torch.inference_mode():
        full = torch.log_softmax(uncached_model(torch.tensor([prompt + res.tokens]), 0)[0], -1)
    seq = prompt + res.tokens
    expected = [0.0] + [full[i - 1, seq[i]].item() for i in range(1, len(seq))]
    assert res.prompt_tokens == prompt
    assert res.prompt_logprobs + res.logprobs == pytest.approx(expected, abs=1e-4)
    # greedy picks the most likely token, whose log-probability is the row maximum
    for i, lp in enumerate(res.logprobs):
        assert lp == pytest.approx(full[len(prompt) - 1 + i].max().item(), abs=1e-4)
    assert all(lp <= 0 for lp in res.logprobs)
    [plain] = llama.generate([prompt], max_gen_len=6, temperature=0)
    assert plain.tokens == res.tokens and plain.logprobs is None and plain.prompt_tokens is None


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(llama):
    prompt = _prompt(3, 7)
    assert _cold(llama, prompt, max_gen_len=12, temperature=0) == _cold(
        llama, prompt, max_gen_len=12, temperature=0
    )
    runs = [
        _cold(llama, prompt, max_gen_len=10, temperature=1.0, top_p=0.95, generator=_gen(s))
        for s in (5, 5, 6)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    # the seeded batch path draws the same way for batch 1
    [res] = llama.generate([prompt], max_gen_len=10, temperature=1.0, top_p=0.95, generator=_gen(5))
    assert res.tokens == runs[0]


def test_the_next_turn_prefills_only_its_new_tokens_and_matches_a_cold_start(llama):
    p1 = _prompt(4, 10)
    out1 = _cold(llama, p1, max_gen_len=5, temperature=0)
    # the last sampled token was never fed through the model, so it is not in the cache
    assert llama.cached_tokens == p1 + out1[:-1]
    p2 = p1 + out1 + _prompt(5, 6)[1:]
    warm = list(llama.stream(p2, max_gen_len=8, temperature=0))
    stats = llama.last_stats
    assert stats.reused == len(p1) + len(out1) - 1
    assert stats.prefilled == len(p2) - stats.reused == 6
    assert warm == _cold(llama, p2, max_gen_len=8, temperature=0)
    assert llama.last_stats.reused == 0


def test_a_diverging_or_repeated_prompt_reuses_the_common_prefix(llama):
    p1 = _prompt(6, 12)
    _cold(llama, p1, max_gen_len=4, temperature=0)
    p3 = p1[:5] + _prompt(7, 8)[1:]
    warm = list(llama.stream(p3, max_gen_len=6, temperature=0))
    assert (llama.last_stats.reused, llama.last_stats.prefilled) == (5, len(p3) - 5)
    assert warm == _cold(llama, p3, max_gen_len=6, temperature=0)
    # the same prompt again: everything but its last token is reused
    again = list(llama.stream(p3, max_gen_len=6, temperature=0))
    assert (llama.last_stats.reused, llama.last_stats.prefilled) == (len(p3) - 1, 1)
    assert again == warm
    # a prompt that is a strict prefix of the cache
    short = p3[:4]
    assert list(llama.stream(short, max_gen_len=3, temperature=0)) == _cold(
        llama, short, max_gen_len=3, temperature=0
    )


def test_closing_a_stream_early_sets_stats_and_keeps_the_cache_exact(llama):
    p1 = _prompt(8, 8)
    full = _cold(llama, p1, max_gen_len=10, temperature=0)
    it = llama.stream(p1, max_gen_len=10, temperature=0)
    got = [next(it) for _ in range(3)]
    it.close()
    assert got == full[:3]
    assert llama.last_stats.generated == 3
    assert llama.cached_tokens == p1 + got[:2]
    p2 = p1 + got + [128009]
    warm = list(llama.stream(p2, max_gen_len=5, temperature=0))
    assert llama.last_stats.reused == len(p1) + 2
    assert warm == _cold(llama, p2, max_gen_len=5, temperature=0)


def test_a_stream_left_open_is_invalidated_by_a_new_generation(llama):
    first = llama.stream(_prompt(9, 5), max_gen_len=10, temperature=0)
    next(first)
    list(llama.stream(_prompt(10, 5), max_gen_len=3, temperature=0))
    stats = llama.last_stats
    with pytest.raises(UsageError, match="another generation started"):
        next(first)
    assert llama.last_stats is stats


def test_batch_generate_equals_per_prompt_streams(llama):
    prompts = [_prompt(11, 4), _prompt(12, 13), _prompt(13, 8)]
    results = llama.generate(prompts, max_gen_len=9, temperature=0)
    for prompt, res in zip(prompts, results, strict=True):
        assert res.tokens == _cold(llama, prompt, max_gen_len=9, temperature=0)
        assert res.stop_reason is StopReason.out_of_tokens
        assert len(res.tokens) == 9


class _ProjectedRows(TorchFunctionMode):
    """Records how many positions per row each vocabulary projection (`F.linear` by `weight`) ran on."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight
        self.positions: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear and args[1] is self.weight:
            self.positions.append(args[0].shape[1])
        return func(*args, **(kwargs or {}))


def test_prefill_projects_only_the_positions_it_needs(llama):
    prompt = _prompt(14, 12)
    llama.reset_cache()
    with _ProjectedRows(llama.model.output.weight) as seen:
        out = list(llama.stream(prompt, max_gen_len=4, temperature=0))
        list(llama.stream(prompt + out + _prompt(15, 5)[1:], max_gen_len=2, temperature=0))  # cache reuse
    assert llama.last_stats.prefilled == 5
    assert seen.positions == [1] * 6  # 12- and 5-token prefills and every decode step: one position each
    prompts = [_prompt(16, 6), _prompt(17, 9)]
    with _ProjectedRows(llama.model.output.weight) as seen:
        plain = llama.generate(prompts, max_gen_len=3, temperature=0)
    assert seen.positions == [1] * 6  # the prefill of 6, then one token per step up to 9 + 3
    with _ProjectedRows(llama.model.output.weight) as seen:
        lp = llama.generate(prompts, max_gen_len=3, temperature=0, logprobs=True)
    assert seen.positions == [1] * 6  # generated tokens' log-probabilities need the last position only
    with _ProjectedRows(llama.model.output.weight) as seen:
        echoed = llama.generate(prompts, max_gen_len=3, temperature=0, logprobs=True, echo=True)
    assert seen.positions == [6] + [1] * 5  # echoed prompt log-probabilities need the whole prefill
    for a, b, c in zip(plain, lp, echoed, strict=True):
        assert a.tokens == b.tokens == c.tokens
        assert b.logprobs == pytest.approx(c.logprobs, abs=1e-5)
    assert [len(r.prompt_logprobs) for r in echoed] == [6, 9]


# A "bigram" model: layers write nothing to the residual stream (wo, w2 zeroed), so the logits depend
# only on the current token, and a few planted rows make chosen transitions certain.
A, B, C = 1000, 2000, 3000


def _bigram_llama(tokenizer: Tokenizer, chain: dict[int, int], *, max_batch_size: int = 2) -> Llama:
    model = _tiny_model(seed=1)
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        for i, (src, dst) in enumerate(chain.items()):
            basis = torch.zeros(model.args.dim)
            basis[i] = 1.0
            model.tok_embeddings.weight[src] = basis
            model.output.weight[dst] += 100.0 * basis
    return _make_llama(model, tokenizer, max_batch_size=max_batch_size)


@pytest.mark.parametrize(
    ("stop_name", "reason"),
    [("<|eot_id|>", "end_of_turn"), ("<|eom_id|>", "end_of_message"), ("<|end_of_text|>", "end_of_turn")],
)
def test_generation_stops_at_each_stop_token(tokenizer, stop_name, reason):
    stop = tokenizer.special_tokens[stop_name]
    llama = _bigram_llama(tokenizer, {A: B, B: C, C: stop})
    assert list(llama.stream([128000, A], max_gen_len=50, temperature=0)) == [B, C, stop]
    assert llama.last_stats.generated == 3
    never = [128000, B, A, A]  # ends on A: B, C, stop
    a, b = llama.generate([[128000, A], never], max_gen_len=50, temperature=0)
    assert a.tokens == [B, C, stop] and a.stop_reason == StopReason(reason)
    assert b.tokens == [B, C, stop] and b.stop_reason == StopReason(reason)


def test_max_gen_len_is_respected_and_clipped_to_the_context(tokenizer):
    llama = _bigram_llama(tokenizer, {A: A})
    assert list(llama.stream([128000, A], max_gen_len=7, temperature=0)) == [A] * 7
    [res] = llama.generate([[128000, A]], max_gen_len=7, temperature=0)
    assert res.tokens == [A] * 7 and res.stop_reason is StopReason.out_of_tokens
    near_full = [128000] + [A] * (MAX_SEQ_LEN - 4)
    assert len(list(llama.stream(near_full, max_gen_len=100, temperature=0))) == 3
    [res] = llama.generate([near_full], max_gen_len=100, temperature=0)
    assert len(res.tokens) == 3


def test_bad_prompts_raise_before_any_work(llama):
    _cold(llama, _prompt(14, 6), max_gen_len=2, temperature=0)
    cached, stats = llama.cached_tokens, llama.last_stats
    too_long = _prompt(15, MAX_SEQ_LEN)
    with pytest.raises(PromptTooLongError, match=rf"{MAX_SEQ_LEN} tokens but max_seq_len is {MAX_SEQ_LEN}"):
        llama.stream(too_long, max_gen_len=1)  # raised at the call, not at the first next()
    with pytest.raises(PromptTooLongError, match="prompt 1"):
        llama.generate([_prompt(16, 3), too_long], max_gen_len=1)
    with pytest.raises(UsageError, match="empty"):
        llama.stream([], max_gen_len=1)
    with pytest.raises(UsageError, match="outside the vocabulary"):
        llama.stream([128000, 128256], max_gen_len=1)
    with pytest.raises(UsageError, match="max_gen_len"):
        llama.stream([128000], max_gen_len=0)
    with pytest.raises(UsageError, match="max_batch_size=3"):
        llama.generate([[128000]] * 4, max_gen_len=1)
    with pytest.raises(UsageError, match="temperature"):
        llama.stream([128000], max_gen_len=1, temperature=-1)
    assert llama.cached_tokens == cached and llama.last_stats is stats


def test_chat_completion_returns_a_decoded_message_and_reuses_the_cache(tokenizer):
    hello, world = tokenizer.encode("Hello"), tokenizer.encode(" world")
    assert len(hello) == len(world) == 1
    eot = tokenizer.eot_id
    # after the assistant header ("\n\n" follows <|end_header_id|>) say "Hello world" and end the turn
    nl = tokenizer.encode("\n\n")[0]
    llama = _bigram_llama(tokenizer, {nl: hello[0], hello[0]: world[0], world[0]: eot})
    messages = [Message(role="user", content="Hi")]
    reply = llama.chat_completion(messages, temperature=0)
    assert reply.role == "assistant"
    assert reply.content == "Hello world"
    assert reply.stop_reason is StopReason.end_of_turn
    assert reply.tokens == [hello[0], world[0]]
    messages += [reply, Message(role="user", content="Again")]
    again = llama.chat_completion(messages, temperature=0, max_gen_len=2)
    assert again.content == "Hello world" and again.stop_reason is StopReason.out_of_tokens
    first_prompt = llama.formatter.encode_dialog_prompt(messages[:1])
    assert llama.last_stats.reused >= len(first_prompt) + 1


# ------------------------------------------------------------------------------------------- build


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer_path):
    from llama_agents.llama.checkpoint import write_random_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    kw = {"seed": 3, "dtype": torch.float32, "tokenizer_path": tokenizer_path}
    return {
        layout: write_random_checkpoint(root / layout, "tiny", layout=layout, **kw)
        for layout in ("meta", "hf")
    }


def test_build_from_a_checkpoint_without_touching_global_torch_state(checkpoints):
    default_dtype = torch.get_default_dtype()
    llama = Llama.build(checkpoints["meta"], max_seq_len=64, max_batch_size=2, device="cpu", progress=False)
    assert torch.get_default_dtype() == default_dtype
    assert llama.device == torch.device("cpu") and llama.model.dtype == torch.float32
    assert llama.max_seq_len == 64 and llama.max_batch_size == 2
    cache = llama.model.cache
    assert (cache.max_batch_size, cache.max_seq_len) == (2, 64)
    assert llama.tokenizer.n_words == 128256
    prompt = _prompt(20, 6)
    meta_out = list(llama.stream(prompt, max_gen_len=8, temperature=0))
    assert len(meta_out) == 8
    # the same seeded weights in the HF layout generate the same tokens
    hf = Llama.build(checkpoints["hf"], max_seq_len=64, device="cpu", progress=False)
    assert list(hf.stream(prompt, max_gen_len=8, temperature=0)) == meta_out


def test_build_rejects_bad_arguments(checkpoints, tokenizer):
    with pytest.raises(UsageError, match="setup_cache"):
        Llama(Transformer(PRESETS["tiny"], device="meta"), tokenizer, max_seq_len=8)
    with pytest.raises(UsageError, match="max_seq_len"):
        Llama.build(checkpoints["meta"], max_seq_len=1, device="cpu", progress=False)
    with pytest.raises(UsageError, match="max_batch_size"):
        Llama.build(checkpoints["meta"], max_batch_size=0, device="cpu", progress=False)


# --------------------------------------------------------------------------------------- benchmark


def test_the_benchmark_script_runs_on_the_tiny_preset_and_prints_one_json_object(tmp_path):
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "tools" / "bench_generate.py"
    args = ["--preset", "tiny", "--prompt-len", "12", "--new-tokens", "6", "--device", "cpu", "--peer", "hf"]
    proc = subprocess.run(
        [sys.executable, str(script), *args, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["preset"] == "tiny" and result["device"] == "cpu" and result["dtype"] == "float32"
    assert (result["prompt_len"], result["new_tokens"], result["generated"]) == (12, 6, 6)
    for side in ("ours", "hf"):
        assert set(result[side]) == {"ttft_s", "decode_s", "decode_tokens_per_s"}
        assert result[side]["ttft_s"] > 0 and result[side]["decode_tokens_per_s"] > 0
    assert result["decode_speedup_vs_hf"] == pytest.approx(
        result["ours"]["decode_tokens_per_s"] / result["hf"]["decode_tokens_per_s"]
    )
    assert result["ttft_ratio_vs_hf"] > 0
    # float32 on CPU, the same weights: greedy decoding agrees with transformers token for token
    assert result["greedy_tokens_agreeing_with_hf"] == 6

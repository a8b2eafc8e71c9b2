"""Tests for llama_agents.backends.local: LocalBackend over a tiny random checkpoint on CPU."""

from __future__ import annotations

import pytest
import torch

from llama_agents.agent import Agent
from llama_agents.backends import Backend, read_stats
from llama_agents.backends.local import LocalBackend
from llama_agents.errors import PromptTooLongError, UsageError
from llama_agents.llama.checkpoint import write_random_checkpoint
from llama_agents.llama.generation import GenerationStats, Llama

MAX_SEQ_LEN = 256


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory, tokenizer_path):
    return write_random_checkpoint(
        tmp_path_factory.mktemp("local") / "tiny",
        "tiny",
        seed=5,
        dtype=torch.float32,
        tokenizer_path=tokenizer_path,
    )


@pytest.fixture(scope="module")
def backend(ckpt_dir) -> LocalBackend:
    return LocalBackend.from_checkpoint(
        ckpt_dir, seed=0, max_seq_len=MAX_SEQ_LEN, device="cpu", progress=False
    )


def _prompt(backend: LocalBackend, text: str) -> list[int]:
    tok = backend.tokenizer
    return [tok.bos_id, *tok.encode(text)]


def test_it_is_a_backend_built_from_a_checkpoint(backend):
    assert isinstance(backend, Backend)
    assert isinstance(backend.llama, Llama)
    assert backend.tokenizer.n_words == 128256
    assert backend.max_seq_len == MAX_SEQ_LEN
    assert backend.llama.model.dtype == torch.float32


def test_complete_streams_ids_and_reuses_the_cache_across_calls(backend):
    backend.reset()
    p1 = _prompt(backend, "The first question")
    out1 = list(backend.complete(p1, max_tokens=6, temperature=0, top_p=1.0))
    assert 1 <= len(out1) <= 6 and all(isinstance(t, int) for t in out1)
    stats = backend.last_stats
    assert isinstance(stats, GenerationStats)
    assert (stats.prefilled, stats.reused, stats.generated) == (len(p1), 0, len(out1))

    p2 = p1 + out1 + backend.tokenizer.encode(" and a follow-up")
    out2 = list(backend.complete(p2, max_tokens=4, temperature=0, top_p=1.0))
    stats = read_stats(backend, len(p2), len(out2))
    assert stats.reused == len(p1) + len(out1) - 1
    assert stats.prefilled == len(p2) - stats.reused
    # the warm answer is the cold answer
    backend.reset()
    assert list(backend.complete(p2, max_tokens=4, temperature=0, top_p=1.0)) == out2
    assert backend.last_stats.reused == 0


def test_a_seed_makes_sampling_reproducible(backend):
    prompt = _prompt(backend, "Tell me a story")

    def sample(seed: int) -> list[int]:
        b = LocalBackend(backend.llama, seed=seed)
        return [list(b.complete(prompt, max_tokens=6, temperature=1.0, top_p=0.95)) for _ in range(2)]

    first = sample(7)
    assert first == sample(7)
    assert first != sample(8)
    assert first[0] != first[1]  # the generator advances between calls


def test_bad_arguments_raise_at_the_call(backend):
    with pytest.raises(PromptTooLongError, match=str(MAX_SEQ_LEN)):
        backend.complete([backend.tokenizer.bos_id] * MAX_SEQ_LEN, max_tokens=1, temperature=0, top_p=1.0)
    with pytest.raises(UsageError, match="max_gen_len"):
        backend.complete([backend.tokenizer.bos_id], max_tokens=0, temperature=0, top_p=1.0)
    with pytest.raises(UsageError, match="top_p"):
        backend.complete([backend.tokenizer.bos_id], max_tokens=1, temperature=0.5, top_p=0)


def test_an_agent_runs_on_it_and_its_second_turn_reuses_the_cache(backend):
    backend.reset()
    with Agent(backend, max_steps=1, max_tokens=4, temperature=0) as agent:
        first = agent.run("Hi")
        assert len(first.steps) == 1 and 1 <= first.generated_tokens <= 4
        agent.run("And again?")
        stats = backend.last_stats
        assert stats.reused > 0
        assert stats.prefilled < stats.prompt_tokens

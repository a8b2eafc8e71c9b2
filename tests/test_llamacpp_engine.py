"""The remote backend against a real engine: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

A tiny random checkpoint written by our own code is exported to GGUF (`tools/export_gguf.py`) and served
by `python -m llama_cpp.server` (llama.cpp compiled by pip). The same weights run in-process through
`LocalBackend`, so the engine's logits, tokenization and greedy tokens are compared with ours.

A second, "rigged" checkpoint makes the output predictable without scripting the backend: attention and
feed-forward outputs are zeroed, so the model is a bigram table, and a few output rows are set so that
the assistant header's last token is followed by `<|python_tag|> hello<|eom_id|>` and ` ping` by
` pong<|eot_id|>`. It shows what the server does with special tokens in its output.

Needs the `engine-tests` extra (`llama-cpp-python[server]`, `gguf`); skipped without it unless
`LLAMA_AGENTS_REQUIRE_ENGINE_TESTS=1` (set by `.ci/run`), which makes a missing engine an error.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_NEEDED = (
    "llama_cpp",
    "gguf",
    "fastapi",
    "uvicorn",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
if _MISSING:
    if os.environ.get("LLAMA_AGENTS_REQUIRE_ENGINE_TESTS") == "1":
        raise RuntimeError(
            f"LLAMA_AGENTS_REQUIRE_ENGINE_TESTS=1 but {', '.join(_MISSING)} cannot be imported; "
            'install the engine: pip install -e ".[engine-tests]"'
        )
    pytest.skip(
        f"the real-engine tests need {', '.join(_MISSING)}: pip install -e '.[engine-tests]' "
        "(llama-cpp-python compiles llama.cpp, ~10 minutes)",
        allow_module_level=True,
    )

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from llama_agents.agent import Agent, RunStopReason  # noqa: E402
from llama_agents.backends import LocalBackend, OpenAIBackend, connect  # noqa: E402
from llama_agents.llama.chat_format import ChatFormat  # noqa: E402
from llama_agents.llama.checkpoint import load_model, write_random_checkpoint  # noqa: E402
from llama_agents.tools import tool  # noqa: E402
from llama_agents.types import Message, StopReason  # noqa: E402

_SCRIPT = Path(__file__).parent.parent / "tools" / "export_gguf.py"
_spec = importlib.util.spec_from_file_location("export_gguf", _SCRIPT)
assert _spec is not None and _spec.loader is not None
export_gguf_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(export_gguf_module)
export_gguf = export_gguf_module.export_gguf

N_CTX = 1024
# llama-cpp-python's sampling extensions, set to what the Llama reference sampler does (none of them)
LLAMA_CPP_PYTHON_NEUTRAL = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}
GREEDY = {"temperature": 0.0, "top_p": 1.0}


# ------------------------------------------------------------------------------------------ fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m llama_cpp.server` on one GGUF, on a free port of 127.0.0.1."""

    def __init__(self, gguf: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--n_ctx", str(N_CTX), "--n_threads", "2", "--verbose", "false"]
        # float32 KV cache (llama.cpp's default is f16), so the numerics match ours to ~1e-6
        cmd += ["--type_k", "0", "--type_v", "0"]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.log_path = log

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited ({self.proc.returncode}):\n{self._tail()}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama_cpp.server not ready after {timeout}s:\n{self._tail()}")

    def _tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def _serve(gguf: Path, log: Path) -> Iterator[Server]:
    server = Server(gguf, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def noise_ckpt(tmp_path_factory, tokenizer_path) -> Path:
    d = tmp_path_factory.mktemp("noise") / "tiny"
    return write_random_checkpoint(d, "tiny", seed=0, dtype=torch.float32, tokenizer_path=tokenizer_path)


@pytest.fixture(scope="module")
def noise_gguf(noise_ckpt) -> Path:
    return export_gguf(noise_ckpt, noise_ckpt.parent / "tiny.gguf", dtype="float32")


@pytest.fixture(scope="module")
def noise_server(noise_gguf) -> Iterator[Server]:
    yield from _serve(noise_gguf, noise_gguf.parent / "server.log")


@pytest.fixture(scope="module")
def noise_local(noise_ckpt) -> LocalBackend:
    return LocalBackend.from_checkpoint(noise_ckpt, seed=0, max_seq_len=N_CTX)


@pytest.fixture(scope="module")
def remote(noise_server, tokenizer) -> Iterator[OpenAIBackend]:
    with connect(noise_server.url + "/v1", tokenizer=tokenizer) as backend:
        yield backend  # type: ignore[misc]


def _rig(ckpt: Path, tokenizer) -> dict[int, int]:
    """Make the checkpoint a bigram model with a few fixed transitions; return them."""
    tok = tokenizer
    hello, ping, pong = (tok.encode(s)[0] for s in (" hello", " ping", " pong"))
    header_end = tok.encode("\n\n")[0]  # the last token of every dialog prompt
    table = {header_end: tok.python_tag_id, tok.python_tag_id: hello, hello: tok.eom_id, ping: pong}
    table[pong] = tok.eot_id
    path = ckpt / "consolidated.00.pth"
    state = torch.load(path, weights_only=True)
    for name in state:
        if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            state[name].zero_()  # the residual stream is the current token's embedding: a bigram model
    emb, out = state["tok_embeddings.weight"], state["output.weight"]
    for cur, nxt in table.items():
        out[nxt] = 5.0 * emb[cur] / emb[cur].norm()
    torch.save(state, path)
    return table


@pytest.fixture(scope="module")
def rigged(tmp_path_factory, tokenizer_path, tokenizer):
    d = tmp_path_factory.mktemp("rigged") / "tiny"
    ckpt = write_random_checkpoint(d, "tiny", seed=1, dtype=torch.float32, tokenizer_path=tokenizer_path)
    table = _rig(ckpt, tokenizer)
    gguf = export_gguf(ckpt, d.parent / "rigged.gguf", dtype="float32")
    for server in _serve(gguf, d.parent / "server.log"):
        with connect(server.url + "/v1", tokenizer=tokenizer) as backend:
            local = LocalBackend.from_checkpoint(ckpt, seed=0, max_seq_len=N_CTX)
            yield backend, local, table


def _prompt(tokenizer, text: str) -> list[int]:
    return ChatFormat(tokenizer).encode_dialog_prompt(
        [Message(role="system", content="Environment: ipython"), Message(role="user", content=text)]
    )


# ------------------------------------------------------------------------------------ the GGUF itself


def test_exported_gguf_logits_equal_ours(noise_ckpt, noise_gguf, tokenizer):
    """llama.cpp, in-process, on the exported file: its logits are our Transformer's (float32)."""
    from llama_cpp import Llama

    ids = _prompt(tokenizer, "Héllo wörld! 12345 ... .:.: 你好 code\n\n  x = [1, 2]")
    llm = Llama(str(noise_gguf), n_ctx=256, logits_all=True, verbose=False, type_k=0, type_v=0, n_threads=2)
    try:
        # the exported tokenizer: llama.cpp's llama-bpe tokenization of the prompt text is ours
        assert llm.tokenize(tokenizer.decode(ids[1:]).encode(), add_bos=True, special=True) == ids
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    _, model, _ = load_model(noise_ckpt, device="cpu", dtype=torch.float32, progress=False)
    with torch.inference_mode():
        ours = model(torch.tensor([ids]), 0)[0].numpy()
    assert np.abs(theirs - ours).max() < 1e-4 * np.abs(ours).max()
    assert (theirs.argmax(-1) == ours.argmax(-1)).all()


# ------------------------------------------------------------------------------------ the remote backend


def test_connect_detects_an_openai_compatible_server(remote, noise_gguf):
    assert type(remote) is OpenAIBackend
    assert remote.model == str(noise_gguf)  # the only served model, from /v1/models
    assert remote.max_seq_len is None  # llama-cpp-python reports no context length


def test_server_tokenizes_our_prompt_text_into_our_ids(remote, noise_server, tokenizer):
    ids = _prompt(tokenizer, "Tabs\tand  spaces, 3.14159, émoji 🦙 and ```code```")
    text = remote.prompt_text(ids, strip_bos=True)
    served = httpx.post(noise_server.url + "/extras/tokenize", json={"input": text}).json()["tokens"]
    assert served == ids  # the server adds <|begin_of_text|> itself and parses the special tokens
    usage = httpx.post(
        noise_server.url + "/v1/completions", json={"prompt": text, "max_tokens": 1, "temperature": 0}
    ).json()["usage"]
    assert usage["prompt_tokens"] == len(ids)


def test_greedy_tokens_equal_the_local_backend(noise_server, noise_local, tokenizer):
    """Greedy through the server equals greedy in-process, once llama-cpp-python's own sampling
    defaults (repeat_penalty 1.1, top_k 40, min_p 0.05) are turned off with `extra_body`: with them,
    the first prompt's reply leaves ours where ours repeats a token."""
    neutral = connect(noise_server.url + "/v1", tokenizer=tokenizer, extra_body=LLAMA_CPP_PYTHON_NEUTRAL)
    assert neutral.extra_body == LLAMA_CPP_PYTHON_NEUTRAL
    for text in ("What is 2+2?", "Write a haiku about llamas."):
        ids = _prompt(tokenizer, text)
        ours = list(noise_local.complete(ids, max_tokens=16, **GREEDY))
        theirs = list(neutral.complete(ids, max_tokens=16, **GREEDY))
        assert len(ours) == 16 and not set(ours) & tokenizer.stop_tokens
        # the server sends text; our backend re-tokenizes it. Noise need not re-tokenize to the same
        # ids, so compare what they spell (and the ids where they do).
        assert tokenizer.decode(theirs) == tokenizer.decode(ours)
        if tokenizer.encode(tokenizer.decode(ours)) == ours:
            assert theirs == ours
        assert neutral.last_stats.generated == len(theirs)
    neutral.close()


def test_text_that_spells_a_special_token_is_parsed_by_the_server_and_we_warn(
    remote, noise_server, tokenizer, caplog
):
    """A text prompt cannot keep user text "<|eot_id|>" plain: the server parses it (special=True)."""
    ids = _prompt(tokenizer, "please print <|eot_id|> literally")
    served = httpx.post(
        noise_server.url + "/extras/tokenize", json={"input": remote.prompt_text(ids, strip_bos=True)}
    ).json()["tokens"]
    assert served != ids and served.count(tokenizer.eot_id) == ids.count(tokenizer.eot_id) + 1
    with caplog.at_level(logging.WARNING, logger="llama_agents.backends.openai"):
        list(remote.complete(ids, max_tokens=1, **GREEDY))
    assert any("special token" in r.getMessage() for r in caplog.records)


def test_too_long_prompt(remote, tokenizer):
    """llama-cpp-python's server answers a streamed request whose prompt exceeds n_ctx with an empty
    200 event stream or a reset connection (the error is raised inside its generator and lost), and
    reports no context
    length; so the backend can only say the stream ended without a reply, unless it is given the
    context length (`max_seq_len`), when it refuses the prompt before sending it."""
    from llama_agents.backends import RemoteSettings
    from llama_agents.errors import BackendError, PromptTooLongError

    ids = _prompt(tokenizer, "llama " * (N_CTX + 10))
    quick = RemoteSettings(max_attempts=2, backoff_base=0.0)
    with (
        OpenAIBackend(remote.base_url, tokenizer, model=remote.model, settings=quick) as backend,
        pytest.raises(BackendError, match="after 0 tokens"),  # an empty stream or a reset
    ):
        list(backend.complete(ids, max_tokens=4, **GREEDY))
    with (
        connect(remote.base_url, tokenizer=tokenizer, max_seq_len=N_CTX) as backend,
        pytest.raises(PromptTooLongError, match="max_seq_len"),
    ):
        assert backend.max_seq_len == N_CTX  # given, since this server reports none
        backend.complete(ids, max_tokens=4, **GREEDY)


# ------------------------------------------------------------------------------ stop and special tokens


def test_rigged_local_model_writes_a_builtin_tool_call(rigged, tokenizer):
    _, local, table = rigged
    ids = _prompt(tokenizer, "run it")
    hello = table[tokenizer.python_tag_id]
    assert list(local.complete(ids, max_tokens=8, **GREEDY)) == [
        tokenizer.python_tag_id,
        hello,
        tokenizer.eom_id,
    ]


def test_server_stops_at_eot_and_we_put_it_back(rigged, tokenizer):
    remote, local, _ = rigged
    ping, pong = tokenizer.encode(" ping")[0], tokenizer.encode(" pong")[0]
    ids = [*_prompt(tokenizer, "say"), ping]
    assert list(local.complete(ids, max_tokens=8, **GREEDY)) == [pong, tokenizer.eot_id]
    # the server stops at <|eot_id|> (end of generation), strips it and says finish_reason "stop";
    # the backend puts <|eot_id|> back, so the reply ends the turn as on the local model
    assert list(remote.complete(ids, max_tokens=8, **GREEDY)) == [pong, tokenizer.eot_id]
    # at the token limit nothing is added
    assert list(remote.complete(ids, max_tokens=1, **GREEDY)) == [pong]


def test_server_drops_python_tag_and_eom(rigged, tokenizer):
    """What llama-cpp-python's server does to a built-in tool call `<|python_tag|> hello<|eom_id|>`:
    it renders its output without special tokens (llama_token_to_piece special=false) and strips the
    end-of-generation token, so `<|python_tag|>` is lost and `<|eom_id|>` cannot be told from
    `<|eot_id|>`: the reply arrives as " hello" and ends the turn. Unsuitable for tool calls."""
    remote, _, table = rigged
    hello = table[tokenizer.python_tag_id]
    ids = _prompt(tokenizer, "run it")
    raw = httpx.post(
        remote.base_url + "/v1/completions",
        json={"prompt": remote.prompt_text(ids, strip_bos=True), "max_tokens": 8, "temperature": 0},
    ).json()["choices"][0]
    assert (raw["text"], raw["finish_reason"]) == (" hello", "stop")
    assert list(remote.complete(ids, max_tokens=8, **GREEDY)) == [hello, tokenizer.eot_id]


# ---------------------------------------------------------------------------------------- the agent


class Recording:
    """Delegates to a real backend and records the prompts the agent sends."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.tokenizer = backend.tokenizer
        self.prompts: list[list[int]] = []
        self.replies: list[list[int]] = []

    def complete(self, prompt_tokens, *, max_tokens, temperature, top_p):
        self.prompts.append(list(prompt_tokens))
        reply = list(
            self.backend.complete(prompt_tokens, max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        )
        self.replies.append(reply)
        yield from reply


@tool
def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: what to look up
    """
    return f"value of {key}"


def _check_transcript(agent: Agent, backend: Recording) -> None:
    fmt = ChatFormat(backend.tokenizer)
    for i, prompt in enumerate(backend.prompts):
        if i:  # within the session every prompt extends the last prompt and its reply
            assert prompt[: len(backend.prompts[i - 1]) + len(backend.replies[i - 1])] == (
                backend.prompts[i - 1] + backend.replies[i - 1]
            )
    # the last prompt is ChatFormat's encoding of the transcript before the last reply
    last_reply_at = max(i for i, m in enumerate(agent.messages) if m.role == "assistant")
    assert backend.prompts[-1] == fmt.encode_dialog_prompt(
        agent.messages[:last_reply_at], agent.tool_prompt_format
    )


def test_agent_on_noise_stops_at_max_tokens_with_a_whole_transcript(remote, tokenizer):
    backend = Recording(remote)
    agent = Agent(backend, [lookup], max_tokens=12, temperature=0.0)
    result = agent.run("Look up the key 'alpha'.")
    assert result.stop_reason is RunStopReason.max_tokens
    assert [m.role for m in result.messages][-1] == "assistant"
    assert [m.role for m in result.messages[:-1]] in (["system", "user"], ["system", "user", "user"])
    reply = result.messages[-1]
    assert reply.stop_reason is StopReason.out_of_tokens and reply.tool_calls == []
    assert reply.content == tokenizer.decode(backend.replies[-1])
    _check_transcript(agent, backend)


def test_agent_on_the_rigged_server_loses_the_tool_call(rigged, tokenizer):
    """The same weights: locally the reply is a built-in tool call; through llama-cpp-python's
    server the agent gets " hello" as a final answer (see test_server_drops_python_tag_and_eom)."""
    remote, local, _ = rigged
    answers = {}
    for name, backend in (("remote", Recording(remote)), ("local", Recording(local))):
        agent = Agent(backend, [lookup], max_tokens=8, max_steps=2, temperature=0.0)
        first = agent.run("Look up 'alpha'.")
        second = agent.run("And 'beta'?")
        answers[name] = (first, second)
        _check_transcript(agent, backend)
    for result in answers["remote"]:
        assert result.stop_reason is RunStopReason.final_answer
        assert result.answer.strip() == "hello"
        assert result.messages[-1].stop_reason is StopReason.end_of_turn
    first_local = answers["local"][0]
    replies = [m for m in first_local.messages if m.role == "assistant"]
    assert replies[0].stop_reason is StopReason.end_of_message  # <|eom_id|>: a tool call was made

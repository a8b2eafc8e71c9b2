"""Remote backends against local servers speaking each engine's protocol (tests/fake_engines.py)."""

from __future__ import annotations

import threading

import pytest
import test_agent as scenarios
from fake_engines import ENGINE_KINDS, Failure, FakeEngine
from http_replay import unused_port_url

from llama_agents.agent import Agent
from llama_agents.backends import LlamaCppBackend, OllamaBackend, OpenAIBackend, VLLMBackend
from llama_agents.backends._remote import RemoteSettings
from llama_agents.backends.remote import connect, is_remote_url, parse_url
from llama_agents.errors import BackendError, PromptTooLongError, UsageError
from llama_agents.llama.chat_format import ChatFormat
from llama_agents.types import Message, StopReason

FAST = RemoteSettings(connect_timeout=2, read_timeout=5, max_attempts=3, backoff_base=0.01, backoff_max=0.05)
MODELS = {"ollama": ["llama3.1:8b"]}
CALL = '<|python_tag|>brave_search.call(query="héllo wörld 123")<|eom_id|>'
ANSWER = "Paris is the capital of France.<|eot_id|>"


def engine(kind, tokenizer, replies=(), **kwargs):
    kwargs.setdefault("models", MODELS.get(kind, ["meta-llama/Llama-3.1-8B-Instruct"]))
    return FakeEngine(kind, tokenizer, replies, **kwargs)


def prompt(tokenizer):
    return ChatFormat(tokenizer).encode_dialog_prompt([Message(role="user", content="Capital of France?")])


def complete(backend, tokenizer, max_tokens=64):
    return list(backend.complete(prompt(tokenizer), max_tokens=max_tokens, temperature=0, top_p=1))


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_native_format_survives_the_round_trip(kind, tokenizer):
    cls = {"vllm": VLLMBackend, "openai": OpenAIBackend, "ollama": OllamaBackend, "llamacpp": LlamaCppBackend}
    with engine(kind, tokenizer, [CALL, ANSWER, "one two three four five six"]) as server:
        backend = connect(server.url, tokenizer=tokenizer, settings=FAST)
        assert type(backend) is cls[kind]
        fmt = ChatFormat(tokenizer)
        call = complete(backend, tokenizer)
        assert call == tokenizer.encode(CALL, allowed_special="all")  # exact ids, stop token put back
        message = fmt.decode_assistant_message(call)
        assert message.stop_reason == StopReason.end_of_message
        assert message.tool_calls[0].arguments == {"query": "héllo wörld 123"}
        answer = complete(backend, tokenizer)
        assert answer[-1] == tokenizer.eot_id
        assert fmt.decode_assistant_message(answer).content == "Paris is the capital of France."
        cut = complete(backend, tokenizer, max_tokens=3)
        assert cut == tokenizer.encode("one two three")
        assert fmt.decode_assistant_message(cut).stop_reason == StopReason.out_of_tokens
        assert backend.last_stats.generated == 3


def test_request_shapes_follow_each_engine(tokenizer):
    ids = prompt(tokenizer)
    text_without_bos = tokenizer.decode(ids[1:])
    stops = ["<|eom_id|>", "<|eot_id|>", "<|end_of_text|>"]
    for kind in ENGINE_KINDS:
        with engine(kind, tokenizer, [ANSWER]) as server:
            complete(connect(server.url, tokenizer=tokenizer, settings=FAST), tokenizer)
            body = server.requests[0]
            assert server.prompts[0] == ids  # the server saw exactly our prompt, one BOS
        if kind == "vllm":
            assert body["prompt"] == ids and body["skip_special_tokens"] is False
            assert body["include_stop_str_in_output"] is True and body["stop"] == stops
            assert body["model"] == "meta-llama/Llama-3.1-8B-Instruct" and body["max_tokens"] == 64
        elif kind == "openai":
            assert body["prompt"] == text_without_bos and body["stop"] == stops
        elif kind == "ollama":
            assert body["raw"] is True and body["prompt"] == text_without_bos
            assert body["options"]["stop"] == stops and body["options"]["num_predict"] == 64
            assert body["model"] == "llama3.1:8b"
        else:
            assert body["prompt"] == ids and body["n_predict"] == 64 and body["stop"] == stops


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_characters_split_across_tokens_and_held_back_text(kind, tokenizer):
    # 🦙 is three byte-level tokens: llama.cpp sends no event for the first two and then the whole
    # character with only the last id; " <" may begin a stop word, so llama.cpp holds it back.
    reply = "🦙 a < b 日本語<|eot_id|>"
    with engine(kind, tokenizer, [reply]) as server:
        backend = connect(server.url, tokenizer=tokenizer, settings=FAST)
        assert complete(backend, tokenizer) == tokenizer.encode(reply, allowed_special="all")


def test_llamacpp_events_carry_ids_and_the_stop_token(tokenizer):
    with engine("llamacpp", tokenizer, [CALL]) as server:
        backend = connect(server.url, tokenizer=tokenizer, settings=FAST)
        assert complete(backend, tokenizer) == tokenizer.encode(CALL, allowed_special="all")
        assert "return_tokens" not in server.requests[0]  # streamed events carry ids anyway
        assert backend.last_stats.prefilled == 5


def test_a_prompt_the_server_cannot_fit_stops_the_run_cleanly(tokenizer):
    n = len(prompt(tokenizer))
    with engine("llamacpp", tokenizer, [ANSWER], max_model_len=n) as server:
        assert connect(server.url, tokenizer=tokenizer).max_seq_len == n  # /props n_ctx
        with pytest.raises(PromptTooLongError, match="max_seq_len"):
            complete(connect(server.url, tokenizer=tokenizer), tokenizer)
        backend = LlamaCppBackend(server.url, tokenizer, settings=FAST)  # context not known here
        with pytest.raises(PromptTooLongError, match=r"exceeds the available context size \(\d+ tokens\)"):
            complete(backend, tokenizer)
        assert server.attempts == 1  # a 400 is not retried


def test_url_forms():
    assert parse_url("vllm+http://h:8000/v1#meta/Llama") == ("vllm", "http://h:8000", "meta/Llama")
    assert parse_url("http://h:11434/api?model=llama3.1") == (None, "http://h:11434", "llama3.1")
    assert parse_url("llamacpp+https://h/prefix/") == ("llamacpp", "https://h/prefix", None)
    assert is_remote_url("ollama+http://x") and not is_remote_url("/ckpt") and not is_remote_url("ftp://x")
    with pytest.raises(UsageError, match="unknown engine 'tgi'"):
        parse_url("tgi+http://h")


def test_named_engine_model_from_fragment_and_unknown_model(tokenizer):
    with engine("vllm", tokenizer, [ANSWER], models=["a", "b"]) as server:
        with pytest.raises(UsageError, match=r"serves several models.*a, b"):
            connect(server.url, tokenizer=tokenizer)
        with pytest.raises(UsageError, match="does not serve the model 'c'; it serves: a, b"):
            connect(f"vllm+{server.url}/v1#c", tokenizer=tokenizer)
        backend = connect(f"{server.url}/v1", model="c", tokenizer=tokenizer, probe=False, engine="vllm")
        with pytest.raises(UsageError, match=r"does not serve the model 'c'.*does not exist"):
            complete(backend, tokenizer)
        assert complete(connect(f"{server.url}#b", tokenizer=tokenizer), tokenizer)[-1] == tokenizer.eot_id


def test_ollama_model_name_and_latest(tokenizer):
    with engine("ollama", tokenizer, [ANSWER], models=["llama3.1:latest", "qwen:7b"]) as server:
        backend = connect(f"{server.url}#llama3.1", tokenizer=tokenizer)
        assert complete(backend, tokenizer)[-1] == tokenizer.eot_id
        backend = connect(server.url, tokenizer=tokenizer, model="mistral", probe=False, engine="ollama")
        with pytest.raises(UsageError, match=r"does not serve the model 'mistral'.*try pulling it first"):
            complete(backend, tokenizer)


def test_tokenizer_and_api_key_from_arguments_or_environment(tokenizer, tokenizer_path, monkeypatch):
    monkeypatch.delenv("LLAMA_AGENTS_TOKENIZER", raising=False)
    monkeypatch.delenv("LLAMA_AGENTS_API_KEY", raising=False)
    with engine("vllm", tokenizer, [ANSWER, ANSWER], api_key="sk-1") as server:
        with pytest.raises(UsageError, match="LLAMA_AGENTS_TOKENIZER"):
            connect(server.url)
        monkeypatch.setenv("LLAMA_AGENTS_TOKENIZER", str(tokenizer_path))
        with pytest.raises(UsageError, match=r"rejected the credentials.*LLAMA_AGENTS_API_KEY"):
            connect(server.url)
        assert complete(connect(server.url, api_key="sk-1"), tokenizer)[-1] == tokenizer.eot_id
        monkeypatch.setenv("LLAMA_AGENTS_API_KEY", "sk-1")
        monkeypatch.setenv("LLAMA_AGENTS_MODEL", server.url)
        agent = Agent(date=scenarios.DATE)
        assert agent.run("Capital of France?").answer == "Paris is the capital of France."


@pytest.mark.parametrize("status", [429, 503])
def test_busy_server_is_retried_before_the_first_token(status, tokenizer):
    with engine("vllm", tokenizer, [ANSWER]) as server:
        server.fail(Failure(status=status, headers={"Retry-After": "0"}), Failure(status=status))
        backend = connect(server.url, tokenizer=tokenizer, settings=FAST)
        assert complete(backend, tokenizer)[-1] == tokenizer.eot_id
        assert server.attempts == 3
        server.fail(*[Failure(status=status)] * 3)
        with pytest.raises(BackendError, match=f"HTTP {status}.*after 3 attempts"):
            complete(backend, tokenizer)


def test_a_slow_listing_is_waited_for_up_to_the_read_timeout(tokenizer):
    # connect_timeout bounds opening the connection only, not the server's answer to the probe
    settings = RemoteSettings(connect_timeout=0.2, read_timeout=5, max_attempts=1)
    with engine("ollama", tokenizer, [ANSWER], listing_delay=0.5) as server:
        backend = connect(server.url, tokenizer=tokenizer, settings=settings)
        assert type(backend) is OllamaBackend and backend.model == "llama3.1:8b"
        assert complete(backend, tokenizer)[-1] == tokenizer.eot_id


def test_down_server_is_a_clear_error(tokenizer):
    url = unused_port_url()
    with pytest.raises(BackendError, match=r"cannot reach.*is it running"):
        connect(url, tokenizer=tokenizer)
    backend = connect(f"vllm+{url}#m", tokenizer=tokenizer, probe=False, settings=FAST)
    with pytest.raises(BackendError, match=r"cannot reach.*gave up after 3 attempts"):
        complete(backend, tokenizer)


@pytest.mark.parametrize("kind", ENGINE_KINDS)
def test_a_dropped_stream_is_an_error_not_a_short_reply(kind, tokenizer):
    with engine(kind, tokenizer, [ANSWER] * 3) as server:
        backend = connect(server.url, tokenizer=tokenizer, settings=FAST)
        server.fail(Failure(drop_after=5))
        with pytest.raises(BackendError, match=r"cut off|cut the reply off"):
            complete(backend, tokenizer)
        server.fail(Failure(drop_after=0))  # dropped before any token was yielded: retried
        assert complete(backend, tokenizer)[-1] == tokenizer.eot_id


def test_a_failed_step_leaves_the_transcript_and_the_run_can_be_retried(tokenizer):
    with engine("llamacpp", tokenizer, [scenarios.json_call("add", a=2, b=3), ANSWER, ANSWER]) as server:
        agent = Agent(connect(server.url, tokenizer=tokenizer, settings=FAST), [scenarios.add])
        server.fail_at(2, Failure(drop_after=6))  # step 1 fine, step 2 cut off mid-reply
        with pytest.raises(BackendError):
            agent.run("What is 2 + 3?")
        roles = [m.role for m in agent.messages]
        assert roles == ["system", "user", "user", "assistant", "tool"]  # the call and its result kept
        assert agent.messages[-1].content == "5"
        assert agent.run("Go on.").answer == "Paris is the capital of France."  # resume: a new run


def test_agents_in_threads_share_one_backend(tokenizer):
    n = 6
    with engine("vllm", tokenizer, [f"Answer {i}.<|eot_id|>" for i in range(n)], delay=0.005) as server:
        backend = connect(server.url, tokenizer=tokenizer, settings=FAST)
        answers: list[str] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                answers.append(Agent(backend, date=scenarios.DATE).run("Hi").answer)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=work) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(answers) == sorted(f"Answer {i}." for i in range(n))


AGENT_SCENARIOS = [
    "test_custom_tool_call_then_answer",
    "test_bad_arguments_are_fed_back_and_the_model_corrects_them",
    "test_two_calls_in_one_message_run_concurrently_and_answer_in_order",
    "test_function_tag_call_ending_in_eot_is_run",
    "test_max_tokens_cuts_a_reply_and_says_so",
    "test_stream_event_order_and_text",
    "test_builtin_search_call_ipython_result_then_answer",
]


@pytest.mark.parametrize("kind", ["vllm", "ollama"])
@pytest.mark.parametrize("name", AGENT_SCENARIOS)
def test_agent_scenarios_through_a_remote_engine(name, kind, tokenizer, monkeypatch):
    servers: list[FakeEngine] = []

    def make_agent(tokenizer, replies, tools=(scenarios.add,), **kwargs):
        server = engine(kind, tokenizer, replies, max_model_len=kwargs.pop("max_seq_len", None)).__enter__()
        servers.append(server)
        kwargs.setdefault("date", scenarios.DATE)
        return Agent(connect(server.url, tokenizer=tokenizer, settings=FAST), tools, **kwargs), server

    monkeypatch.setattr(scenarios, "make_agent", make_agent)
    test = getattr(scenarios, name)
    try:
        args = {"tokenizer": tokenizer}
        if "monkeypatch" in test.__code__.co_varnames[: test.__code__.co_argcount]:
            args["monkeypatch"] = monkeypatch
        test(**args)
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def test_connect_passes_max_seq_len_and_extra_body(tokenizer):
    with engine("vllm", tokenizer, models=["m"], max_model_len=4096) as server:
        backend = connect(f"{server.url}#m", tokenizer=tokenizer, max_seq_len=1024, extra_body={"seed": 7})
        assert backend.max_seq_len == 1024  # the caller's value wins over the server's 4096
        assert backend.extra_body == {"seed": 7}
        assert connect(f"{server.url}#m", tokenizer=tokenizer).max_seq_len == 4096
        with pytest.raises(UsageError, match="positive int"):
            connect(f"{server.url}#m", tokenizer=tokenizer, max_seq_len=0)
    with (
        engine("ollama", tokenizer) as server,
        pytest.raises(UsageError, match="extra_body is for OpenAI"),
    ):
        connect(f"{server.url}#llama3.1:8b", tokenizer=tokenizer, extra_body={"seed": 7})

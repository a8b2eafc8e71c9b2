"""Tests of WolframAlpha against a real HTTP server on 127.0.0.1 replaying recorded API answers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from http_replay import FAST_HTTP, ReplayServer, Reply, load_data, unused_port_url

from llama_agents.errors import ToolConfigurationError, UsageError
from llama_agents.tools import HttpSettings, WolframAlpha
from llama_agents.types import BuiltinTool

PATH = "/v2/query"


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as s:
        yield s


def wolfram(server: ReplayServer, **kwargs: object) -> WolframAlpha:
    options: dict[str, object] = {"base_url": server.base_url, "http": FAST_HTTP, **kwargs}
    return WolframAlpha("test-appid", **options)  # type: ignore[arg-type]


def recorded(name: str, status: int = 200) -> Reply:
    return Reply(status=status, body=load_data(name), content_type="application/json;charset=utf-8")


def test_definition_is_the_builtin_tool() -> None:
    tool = WolframAlpha("k")
    assert tool.name == "wolfram_alpha" and tool.builtin is BuiltinTool.wolfram_alpha
    assert tool.definition().required == ["query"]


def test_success_returns_compact_pods(server: ReplayServer) -> None:
    server.script(PATH, recorded("wolfram_success.json"))
    result = wolfram(server, extra_params={"units": "metric"}).call({"query": "integrate x^2 sin x dx"})
    assert not result.is_error
    answer = json.loads(result.content)
    assert answer["query"] == "integrate x^2 sin x dx" and answer["success"] is True
    pods = answer["pods"]
    # the plot pod has no plaintext and is left out
    assert [p["title"] for p in pods] == [
        "Indefinite integral",
        "Alternate form of the integral",
        "Series expansion of the integral at x=0",
        "Definite integrals",
    ]
    assert pods[0] == {
        "title": "Indefinite integral",
        "primary": True,
        "subpods": [{"plaintext": "integral x^2 sin(x) dx = 2 x sin(x) - (x^2 - 2) cos(x) + constant"}],
    }
    assert "primary" not in pods[1]
    assert pods[3]["subpods"][0] == {
        "title": "Integral over x from 0 to pi",
        "plaintext": "integral_0^π x^2 sin(x) dx = π^2 - 4≈5.8696",
    }
    assert "π" in result.content  # not \\u-escaped: fewer tokens for the model
    assert "scanner" not in result.content and "expressiontypes" not in result.content
    (request,) = server.requests
    assert request.query == {
        "units": ["metric"],
        "appid": ["test-appid"],
        "input": ["integrate x^2 sin x dx"],
        "output": ["json"],
        "format": ["plaintext"],
    }


def test_max_pods_limits_the_answer(server: ReplayServer) -> None:
    server.script(PATH, recorded("wolfram_success.json"))
    answer = json.loads(wolfram(server, max_pods=1).call({"query": "x"}).content)
    assert [p["title"] for p in answer["pods"]] == ["Indefinite integral"]
    with pytest.raises(UsageError, match="max_pods=0"):
        WolframAlpha("k", max_pods=0)


def test_not_understood_returns_didyoumeans_and_tips(server: ReplayServer) -> None:
    server.script(PATH, recorded("wolfram_didyoumean.json"))
    result = wolfram(server).call({"query": "weathr in bostn tomorow"})
    assert result.is_error
    assert json.loads(result.content) == {
        "query": "weathr in bostn tomorow",
        "success": False,
        "didyoumeans": ["weather in boston tomorrow", "weather boston"],
        "tips": ["Check your spelling, and use English"],
    }


def test_single_didyoumean_object_and_bare_failure(server: ReplayServer) -> None:
    single = {"queryresult": {"success": False, "error": False, "didyoumeans": {"score": "0.5", "val": "pi"}}}
    bare = {"queryresult": {"success": False, "error": False, "numpods": 0}}
    server.script(PATH, Reply(body=single), Reply(body=bare))
    tool = wolfram(server)
    assert json.loads(tool.call({"query": "pie"}).content)["didyoumeans"] == ["pi"]
    result = tool.call({"query": "zzz"})
    assert result.is_error and json.loads(result.content) == {"query": "zzz", "success": False}


def test_success_without_text_is_an_error_result(server: ReplayServer) -> None:
    plots_only = {
        "queryresult": {"success": True, "error": False, "pods": [{"title": "Plot", "subpods": [{}]}]}
    }
    server.script(PATH, Reply(body=plots_only))
    result = wolfram(server).call({"query": "plot sin x"})
    assert result.is_error and "returned no text answer" in result.content


def test_invalid_appid_in_the_body_raises(server: ReplayServer) -> None:
    server.script(PATH, recorded("wolfram_invalid_appid.json"))
    with pytest.raises(
        ToolConfigurationError, match=r"appid is invalid \(error 1: Invalid appid\).*WOLFRAM_ALPHA"
    ):
        wolfram(server).call({"query": "2+2"})
    assert len(server.requests) == 1


def test_other_api_error_is_fed_back(server: ReplayServer) -> None:
    body = {"queryresult": {"success": False, "error": {"code": "1000", "msg": "Input too long"}}}
    server.script(PATH, Reply(body=body))
    result = wolfram(server).call({"query": "x"})
    assert result == result.error("Wolfram Alpha returned error 1000: Input too long", data=body)


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_status_raises(server: ReplayServer, status: int) -> None:
    server.script(PATH, Reply(status=status, body="Error 1: Invalid appid", content_type="text/plain"))
    with pytest.raises(ToolConfigurationError, match=rf"HTTP {status}: \('Error 1: Invalid appid'\)"):
        wolfram(server).call({"query": "2+2"})
    assert len(server.requests) == 1


def test_missing_key_raises_at_construction(monkeypatch: pytest.MonkeyPatch, server: ReplayServer) -> None:
    monkeypatch.delenv("WOLFRAM_ALPHA_API_KEY", raising=False)
    with pytest.raises(ToolConfigurationError, match=r"export WOLFRAM_ALPHA_API_KEY=<your key>"):
        WolframAlpha()
    monkeypatch.setenv("WOLFRAM_ALPHA_API_KEY", "env-appid")
    server.script(PATH, recorded("wolfram_success.json"))
    WolframAlpha(base_url=server.base_url, http=FAST_HTTP).call({"query": "x"})
    assert server.requests[0].query["appid"] == ["env-appid"]


def test_a_key_that_cannot_be_sent_raises_at_construction() -> None:
    with pytest.raises(ToolConfigurationError, match="WOLFRAM_ALPHA_API_KEY"):
        WolframAlpha("APP ID\n")
    assert WolframAlpha("  ABCDEF-1234\n")._api_key == "ABCDEF-1234"


def test_default_timeouts_allow_slow_computations() -> None:
    settings = WolframAlpha("k")._client.settings
    assert settings.timeout == 30.0 and settings.total_timeout == 90.0


def test_429_with_retry_after_then_success(server: ReplayServer) -> None:
    server.script(PATH, Reply(status=429, headers={"Retry-After": "0.3"}), recorded("wolfram_success.json"))
    assert not wolfram(server).call({"query": "x"}).is_error
    first, second = server.requests
    assert 0.28 <= second.at - first.at < 3.0  # waited the server's 0.3 s, not the tiny backoff


def test_500_then_success(server: ReplayServer) -> None:
    server.script(PATH, Reply(status=500), recorded("wolfram_success.json"))
    assert not wolfram(server).call({"query": "x"}).is_error
    assert len(server.requests) == 2


def test_timeout_is_reported(server: ReplayServer) -> None:
    server.script(PATH, Reply(delay=5.0, body={}))
    settings = HttpSettings(timeout=0.2, max_attempts=2, backoff_base=0.01, total_timeout=2.0)
    start = time.monotonic()
    result = wolfram(server, http=settings).call({"query": "x"})
    assert time.monotonic() - start < 4.0  # two 0.2 s timeouts, not the server's 5 s delay
    assert result.is_error and "Wolfram Alpha did not answer usably after 2 attempt(s)" in result.content


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(body='{"queryresult": {"success": tru', content_type="application/json"), "invalid JSON"),
        (Reply(body=load_data("captive_portal.html"), content_type="text/html"), "HTML page instead of JSON"),
        (Reply(body=["not", "an", "object"]), "unexpected answer (no queryresult)"),
        (Reply(stream_bytes=10_000_000), "over the 100000-byte limit"),
    ],
    ids=["invalid-json", "html", "wrong-shape", "oversized"],
)
def test_unusable_answers_are_error_results(server: ReplayServer, reply: Reply, expected: str) -> None:
    server.script(PATH, reply)
    settings = HttpSettings(timeout=1.0, max_body_bytes=100_000, total_timeout=3.0)
    result = wolfram(server, http=settings).call({"query": "x"})
    assert result.is_error and expected in result.content
    assert len(server.requests) == 1


def test_connection_refused_is_reported() -> None:
    result = WolframAlpha("k", base_url=unused_port_url(), http=FAST_HTTP).call({"query": "x"})
    assert (
        result.is_error and "after 3 attempt(s)" in result.content and "connection failed" in result.content
    )

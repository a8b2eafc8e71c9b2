"""Tests of BraveSearch and the shared HTTP client, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import random
import time
from collections.abc import Iterator

import pytest
from http_replay import FAST_HTTP, ReplayServer, Reply, load_data, unused_port_url

from llama_agents.errors import ToolConfigurationError, UsageError
from llama_agents.tools import BraveSearch, HttpSettings
from llama_agents.tools._http import JsonHttpClient
from llama_agents.types import BuiltinTool

PATH = "/res/v1/web/search"


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as s:
        yield s


def brave(server: ReplayServer, **kwargs: object) -> BraveSearch:
    options: dict[str, object] = {"base_url": server.base_url, "http": FAST_HTTP, **kwargs}
    return BraveSearch("test-key", **options)  # type: ignore[arg-type]


def ok_reply() -> Reply:
    return Reply(body=load_data("brave_web_search.json"), content_type="application/json")


def test_definition_is_the_builtin_tool() -> None:
    tool = BraveSearch("k")
    assert tool.name == "brave_search" and tool.builtin is BuiltinTool.brave_search
    definition = tool.definition()
    assert definition.required == ["query"]
    assert definition.properties["query"]["type"] == "string"


def test_search_returns_compact_top_results(server: ReplayServer) -> None:
    server.script(PATH, ok_reply())
    result = brave(server, top_k=3, extra_params={"country": "us"}).call(
        {"query": "  llama 3.1 release date "}
    )
    assert not result.is_error
    answer = json.loads(result.content)
    assert answer["query"] == "llama 3.1 release date"
    assert [r["url"] for r in answer["results"]] == [
        "https://ai.meta.com/blog/meta-llama-3-1/",
        "https://en.wikipedia.org/wiki/Llama_(language_model)",
        "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct",
    ]
    first, second = answer["results"][:2]
    assert first["title"] == "Introducing Llama 3.1: Our most capable models to date"
    assert first["description"].startswith("Jul 23, 2024 - Llama 3.1 405B is the first")  # <strong> stripped
    assert first["age"] == "July 23, 2024" and "age" not in second
    assert "2024 & came in 8B" in second["description"]  # &amp; unescaped
    assert set(first) == {"title", "url", "description", "age"}  # no profile, meta_url, ...
    assert result.data["web"]["results"][0]["profile"]["name"] == "Meta"  # the raw answer for the program
    (request,) = server.requests
    assert request.method == "GET"
    assert request.query == {"q": ["llama 3.1 release date"], "count": ["3"], "country": ["us"]}
    assert request.headers["x-subscription-token"] == "test-key"
    assert request.headers["accept"] == "application/json"


def test_no_results_is_an_error_result_for_the_model(server: ReplayServer) -> None:
    server.script(PATH, Reply(body=load_data("brave_no_results.json"), content_type="application/json"))
    result = brave(server).call({"query": "qwzxqwzx llamallama zzqq"})
    assert result.is_error
    assert "found no web results for 'qwzxqwzx llamallama zzqq'" in result.content


def test_bad_arguments_are_fed_back_without_a_request(server: ReplayServer) -> None:
    tool = brave(server)
    empty = tool.call({"query": "   "})
    assert empty.is_error and "query: String should have at least 1 character" in empty.content
    wrong = tool.call({"q": "llamas"})
    assert wrong.is_error and "unexpected argument(s) 'q'" in wrong.content
    assert server.requests == []


def test_missing_key_raises_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRAVE_SEARCH_API_KEY", raising=False)
    with pytest.raises(ToolConfigurationError, match=r"export BRAVE_SEARCH_API_KEY=<your key>"):
        BraveSearch()
    with pytest.raises(ToolConfigurationError, match="empty api_key"):
        BraveSearch("  ")
    with pytest.raises(UsageError, match="top_k=0"):
        BraveSearch("k", top_k=0)


@pytest.mark.parametrize("key", ["clé-ü", "key\nline", "two words", "tab\tkey"])
def test_a_key_that_cannot_be_sent_raises_at_construction_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    # Was: a non-ASCII key failed each call as "UnicodeEncodeError" shown to the model, and a key with
    # a newline was retried as "service down" with the key itself in the error result the model reads.
    with pytest.raises(ToolConfigurationError, match="BRAVE_SEARCH_API_KEY") as raised:
        BraveSearch(key)
    assert key not in str(raised.value)
    monkeypatch.setenv("BRAVE_SEARCH_API_KEY", f"  {key}  ")
    with pytest.raises(ToolConfigurationError, match="printable ASCII"):
        BraveSearch()


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch, server: ReplayServer) -> None:
    monkeypatch.setenv("BRAVE_SEARCH_API_KEY", "env-key")
    server.script(PATH, ok_reply())
    assert not BraveSearch(base_url=server.base_url, http=FAST_HTTP).call({"query": "x"}).is_error
    assert server.requests[0].headers["x-subscription-token"] == "env-key"


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_key_raises_and_is_not_retried(server: ReplayServer, status: int) -> None:
    server.script(PATH, Reply(status=status, body={"error": "Unauthorized"}))
    with pytest.raises(
        ToolConfigurationError, match=rf"rejected the API key \(HTTP {status}.*BRAVE_SEARCH_API_KEY"
    ):
        brave(server).call({"query": "x"})
    assert len(server.requests) == 1


def test_brave_invalid_token_answer_raises(server: ReplayServer) -> None:
    server.script(
        PATH, Reply(status=422, body=load_data("brave_invalid_token.json"), content_type="application/json")
    )
    with pytest.raises(ToolConfigurationError, match="SUBSCRIPTION_TOKEN_INVALID, HTTP 422"):
        brave(server).call({"query": "x"})
    assert len(server.requests) == 1


def test_other_client_error_is_fed_back_not_retried(server: ReplayServer) -> None:
    body = {"type": "ErrorResponse", "error": {"status": 422, "code": "VALIDATION", "detail": "q too long"}}
    server.script(PATH, Reply(status=422, body=body))
    result = brave(server).call({"query": "x"})
    assert (
        result.is_error
        and "refused the request: HTTP 422" in result.content
        and "q too long" in result.content
    )
    assert len(server.requests) == 1


def test_429_retry_after_seconds_is_honoured(server: ReplayServer) -> None:
    rate_limited = Reply(
        status=429,
        body=load_data("brave_rate_limited.json"),
        content_type="application/json",
        headers={"Retry-After": "0.4", "X-RateLimit-Remaining": "0, 1958"},
    )
    server.script(PATH, rate_limited, ok_reply())
    result = brave(server).call({"query": "x"})
    assert not result.is_error
    first, second = server.requests
    # waited what the server asked, not the 0.02 s backoff (the upper bound is only a safety net)
    assert 0.38 <= second.at - first.at < 3.0


def test_429_retry_after_http_date_is_capped(server: ReplayServer) -> None:
    in_an_hour = email.utils.formatdate(time.time() + 3600, usegmt=True)
    server.script(PATH, Reply(status=429, headers={"Retry-After": in_an_hour}), ok_reply())
    settings = HttpSettings(
        timeout=0.5, max_attempts=2, backoff_base=0.01, retry_after_max=0.3, total_timeout=3
    )
    result = brave(server, http=settings).call({"query": "x"})
    assert not result.is_error
    first, second = server.requests
    # capped at retry_after_max: uncapped, the hour-long wait would not fit total_timeout and fail
    assert 0.28 <= second.at - first.at < 2.5


def test_500_then_success(server: ReplayServer) -> None:
    server.script(PATH, Reply(status=500, body="oops"), Reply(status=503), ok_reply())
    result = brave(server).call({"query": "x"})
    assert not result.is_error and len(server.requests) == 3


def test_persistent_5xx_gives_up_after_max_attempts(server: ReplayServer) -> None:
    server.script(PATH, Reply(status=500, body={"error": "internal"}))
    start = time.monotonic()
    result = brave(server).call({"query": "x"})
    assert time.monotonic() - start < 5.0  # three quick attempts, no long sleeps
    assert result.is_error
    assert "did not answer usably after 3 attempt(s)" in result.content
    assert "HTTP 500" in result.content and "internal" in result.content
    assert len(server.requests) == 3


def test_backoff_is_full_jitter_and_bounded(server: ReplayServer) -> None:
    server.script(PATH, Reply(status=502))
    settings = HttpSettings(timeout=0.5, max_attempts=4, backoff_base=0.1, backoff_max=0.15, total_timeout=5)
    brave(server, http=settings).call({"query": "x"})
    times = [r.at for r in server.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # retry n waits uniformly in [0, min(0.15, 0.1 * 2**(n-1))], plus the request itself
    # (plus a margin for a loaded machine; the exact bounds are checked on _delay below)
    assert len(gaps) == 3 and all(gap < 0.15 + 0.5 for gap in gaps)

    client = JsonHttpClient("S", key_env="K", settings=settings, rng=random.Random(0))
    for attempt, ceiling in [(1, 0.1), (2, 0.15), (5, 0.15)]:
        delays = [client._delay(attempt, None) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9  # spread over the whole range
    assert client._delay(1, 0.7) == 0.7  # Retry-After as given
    assert client._delay(1, 99.0) == settings.retry_after_max  # ... capped


def test_total_time_is_bounded_even_with_long_backoff(server: ReplayServer) -> None:
    server.script(PATH, Reply(status=503, headers={"Retry-After": "30"}))
    settings = HttpSettings(timeout=0.5, max_attempts=10, retry_after_max=30, total_timeout=1.0)
    start = time.monotonic()
    result = brave(server, http=settings).call({"query": "x"})
    assert time.monotonic() - start < 5.0  # does not sleep 30 s it cannot afford
    assert result.is_error and "after 1 attempt(s)" in result.content and "HTTP 503" in result.content


def test_timeout_is_retried_then_reported(server: ReplayServer) -> None:
    server.script(PATH, Reply(delay=5.0, body={}))
    settings = HttpSettings(timeout=0.2, max_attempts=2, backoff_base=0.01, total_timeout=2.0)
    start = time.monotonic()
    result = brave(server, http=settings).call({"query": "x"})
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 4.0  # two 0.2 s timeouts, not the server's 5 s delay
    assert result.is_error and "after 2 attempt(s)" in result.content
    assert "timed out" in result.content or "no complete answer" in result.content


def test_slow_then_fast_succeeds(server: ReplayServer) -> None:
    server.script(PATH, Reply(delay=5.0, body={}), ok_reply())
    settings = HttpSettings(timeout=0.2, max_attempts=2, backoff_base=0.01, total_timeout=2.0)
    assert not brave(server, http=settings).call({"query": "x"}).is_error


def test_invalid_json_is_reported(server: ReplayServer) -> None:
    server.script(PATH, Reply(body='{"web": {"results": [', content_type="application/json"))
    result = brave(server).call({"query": "x"})
    assert result.is_error and "invalid JSON (HTTP 200" in result.content and '{"web"' in result.content
    assert len(server.requests) == 1


def test_html_page_is_reported(server: ReplayServer) -> None:
    server.script(PATH, Reply(body=load_data("captive_portal.html"), content_type="text/html; charset=utf-8"))
    result = brave(server).call({"query": "x"})
    assert result.is_error
    assert "HTML page instead of JSON (HTTP 200)" in result.content
    assert "'Sign in to Guest Wi-Fi'" in result.content


def test_html_gateway_error_is_retried(server: ReplayServer) -> None:
    server.script(PATH, Reply(status=502, body=load_data("bad_gateway.html"), content_type="text/html"))
    result = brave(server).call({"query": "x"})
    assert result.is_error and "HTTP 502 (HTML page titled '502 Bad Gateway')" in result.content
    assert len(server.requests) == 3


def test_oversized_streamed_body_is_cut(server: ReplayServer) -> None:
    server.script(PATH, Reply(stream_bytes=1_000_000_000, content_type="application/json"))
    settings = HttpSettings(timeout=2.0, max_body_bytes=200_000, total_timeout=5.0)
    result = brave(server, http=settings).call({"query": "x"})
    assert result.is_error and "over the 200000-byte limit" in result.content
    time.sleep(0.2)  # let the server notice the hang-up
    assert server.bytes_sent[PATH] < 50_000_000  # the client stopped reading long before 1 GB
    assert len(server.requests) == 1  # not retried


def test_oversized_declared_length_is_not_read(server: ReplayServer) -> None:
    server.script(PATH, Reply(stream_bytes=300_000, content_length=5_000_000_000))
    result = brave(server, http=HttpSettings(max_body_bytes=100_000)).call({"query": "x"})
    assert result.is_error and "5000000000-byte answer, over the 100000-byte limit" in result.content


def test_connection_refused_is_retried_then_reported() -> None:
    tool = BraveSearch("k", base_url=unused_port_url(), http=FAST_HTTP)
    start = time.monotonic()
    result = tool.call({"query": "x"})
    assert time.monotonic() - start < 5.0  # quick retries, no hang
    assert result.is_error and "after 3 attempt(s)" in result.content and "ConnectError" in result.content


def test_redirect_is_not_followed(server: ReplayServer) -> None:
    server.script(PATH, Reply(status=302, headers={"Location": f"{server.base_url}/elsewhere"}))
    server.script("/elsewhere", ok_reply())
    result = brave(server).call({"query": "x"})
    assert result.is_error and "redirect (HTTP 302 to" in result.content and "/elsewhere" in result.content
    assert [r.path for r in server.requests] == [PATH]  # the key never went to the other URL


def test_dropped_connection_is_retried(server: ReplayServer) -> None:
    server.script(PATH, Reply(drop=True), ok_reply())
    assert not brave(server).call({"query": "x"}).is_error
    assert len(server.requests) == 2


def test_works_from_async_code_and_concurrently(server: ReplayServer) -> None:
    server.script(PATH, ok_reply())
    tool = brave(server)

    async def main() -> list[bool]:
        results = await asyncio.gather(*(tool.acall({"query": f"q{i}"}) for i in range(3)))
        inside = tool.call({"query": "sync inside a loop"})
        return [r.is_error for r in [*results, inside]]

    assert asyncio.run(main()) == [False] * 4
    assert sorted(r.query["q"][0] for r in server.requests)[:3] == ["q0", "q1", "q2"]


def test_http_settings_are_checked() -> None:
    with pytest.raises(UsageError, match="max_attempts=0"):
        HttpSettings(max_attempts=0)

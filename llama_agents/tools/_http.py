"""The HTTP client the web tools share: JSON GET requests with timeouts, retries and limits.

What it does: send one GET and return the parsed JSON body, retrying on what is worth retrying
(429, 5xx, connection errors, timeouts) with exponential backoff and full jitter, honouring a
server's `Retry-After` (seconds or an HTTP date, capped), within a bounded total time. Bodies are
streamed and cut at a size limit, so a huge or endless answer cannot exhaust memory. HTML pages and
invalid JSON are reported as what they are.

Failures come out as two kinds:
- `ToolConfigurationError` (raised to the developer): the service rejected the API key (401/403).
  No retry can fix that.
- `UpstreamError` (the tool turns it into an error result for the model): everything else that went
  wrong: retries exhausted, another 4xx, a redirect (never followed: it would carry the key
  elsewhere), an oversized or unreadable body.

What it does not do: know any API's format beyond "JSON", cache, or keep connections across calls
(each call opens its own `httpx.AsyncClient`, so a tool works from any event loop or thread).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import httpx

from llama_agents._retry import backoff_delay, parse_retry_after
from llama_agents.errors import ToolConfigurationError, UsageError

__all__ = ["HttpSettings", "JsonHttpClient", "UpstreamError", "resolve_api_key"]

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_SNIPPET = 300


@dataclass(frozen=True)
class HttpSettings:
    """Timeouts, retries and limits of the web tools' HTTP calls.

    - `timeout`: seconds for each attempt (connect, each read, and the whole attempt).
    - `max_attempts`: attempts in all, the first included (1 = no retry).
    - `backoff_base`, `backoff_max`: the wait before retry n is uniform in
      [0, min(backoff_max, backoff_base * 2**(n-1))] ("full jitter").
    - `retry_after_max`: the longest `Retry-After` honoured; a longer one is cut to this.
    - `total_timeout`: the most seconds one call may take, retries and waits included.
    - `max_body_bytes`: a longer response body is not read past this and is an error.
    """

    timeout: float = 15.0
    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 30.0
    total_timeout: float = 60.0
    max_body_bytes: int = 5_000_000

    def __post_init__(self) -> None:
        checks = {
            "timeout": self.timeout > 0,
            "max_attempts": self.max_attempts >= 1,
            "backoff_base": self.backoff_base >= 0,
            "backoff_max": self.backoff_max >= 0,
            "retry_after_max": self.retry_after_max >= 0,
            "total_timeout": self.total_timeout > 0,
            "max_body_bytes": self.max_body_bytes > 0,
        }
        for field, ok in checks.items():
            if not ok:
                raise UsageError(f"HttpSettings.{field}={getattr(self, field)!r} is out of range")


class UpstreamError(Exception):
    """The service failed to give a usable answer; the message says how, for the model to read.

    `status` is the last HTTP status (None when no response came), `payload` the parsed JSON body
    of an error response when there was one.
    """

    def __init__(self, message: str, *, status: int | None = None, payload: Any = None):
        super().__init__(message)
        self.status = status
        self.payload = payload


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


class JsonHttpClient:
    """GET JSON from one service. `service` and `key_env` only word the errors."""

    def __init__(
        self,
        service: str,
        *,
        key_env: str,
        settings: HttpSettings | None = None,
        rng: random.Random | None = None,
        user_agent: str = "llama-agents",
    ):
        self.service = service
        self.key_env = key_env
        self.settings = settings or HttpSettings()
        self._rng = rng or random.Random()
        self._user_agent = user_agent

    async def get_json(
        self, url: str, *, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        """The parsed JSON body of a successful GET; raises `UpstreamError` or `ToolConfigurationError`."""
        settings = self.settings
        start = time.monotonic()
        deadline = start + settings.total_timeout
        all_headers = {"Accept": "application/json", "User-Agent": self._user_agent, **(headers or {})}
        timeout = httpx.Timeout(settings.timeout)
        last: _Retryable | None = None
        attempt = 0
        # No redirects: the APIs do not redirect, and following one would carry the key to another host.
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=True) as client:
            while attempt < settings.max_attempts:
                attempt += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    return await asyncio.wait_for(
                        self._attempt(client, url, params, all_headers), min(settings.timeout, remaining)
                    )
                except _Retryable as e:
                    last = e
                except asyncio.TimeoutError:
                    last = _Retryable(f"no complete answer within {min(settings.timeout, remaining):.3g}s")
                if attempt >= settings.max_attempts:
                    break
                delay = self._delay(attempt, last.retry_after)
                if time.monotonic() + delay >= deadline:
                    logger.info(
                        "%s: not retrying, the wait of %.2fs passes the total time", self.service, delay
                    )
                    break
                logger.info(
                    "%s: attempt %d failed (%s); retrying in %.2fs", self.service, attempt, last.reason, delay
                )
                await asyncio.sleep(delay)
        elapsed = time.monotonic() - start
        reason = last.reason if last is not None else "out of time"
        raise UpstreamError(
            f"{self.service} did not answer usably after {attempt} attempt(s) in {elapsed:.1f}s; "
            f"last error: {reason}. The service may be down or overloaded; try again later.",
            status=last.status if last is not None else None,
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        return backoff_delay(
            attempt,
            retry_after,
            base=s.backoff_base,
            maximum=s.backoff_max,
            retry_after_max=s.retry_after_max,
            rng=self._rng,
        )

    async def _attempt(
        self, client: httpx.AsyncClient, url: str, params: dict[str, Any] | None, headers: dict[str, str]
    ) -> Any:
        try:
            async with client.stream("GET", url, params=params, headers=headers) as response:
                body = await self._read_limited(response)
        except httpx.TimeoutException as e:
            raise _Retryable(f"timed out ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise _Retryable(f"connection failed ({type(e).__name__}: {e or 'no detail'})") from e
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        if status in _RETRY_STATUSES or status >= 500:
            raise _Retryable(
                f"HTTP {status} {_describe(body, content_type)}",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                status=status,
            )
        if status in (401, 403):
            raise ToolConfigurationError(
                f"{self.service} rejected the API key (HTTP {status}: {_describe(body, content_type)}). "
                f"Check the key passed to the tool or set in {self.key_env}, and that its plan allows "
                "this API."
            )
        if 300 <= status < 400:
            location = response.headers.get("location", "(no Location)")
            raise UpstreamError(
                f"{self.service} answered with a redirect (HTTP {status} to {_snippet(location)!r}), "
                "which is not followed so the key stays with the API; check the tool's base_url.",
                status=status,
            )
        if status >= 400:
            raise UpstreamError(
                f"{self.service} refused the request: HTTP {status} {_describe(body, content_type)}",
                status=status,
                payload=_try_json(body),
            )
        return self._parse(body, status, content_type)

    async def _read_limited(self, response: httpx.Response) -> bytes:
        limit = self.settings.max_body_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise UpstreamError(
                f"{self.service} sent a {int(declared)}-byte answer, over the {limit}-byte limit; "
                "it was not read.",
                status=response.status_code,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(
                    f"{self.service} sent an answer over the {limit}-byte limit; it was cut off and dropped.",
                    status=response.status_code,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, body: bytes, status: int, content_type: str) -> Any:
        text = body.decode("utf-8", errors="replace")
        if "html" in content_type.lower() or text.lstrip()[:1] == "<":
            raise UpstreamError(
                f"{self.service} answered with an HTML page instead of JSON (HTTP {status}): "
                f"{_describe(body, content_type)}",
                status=status,
            )
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UpstreamError(
                f"{self.service} answered with invalid JSON (HTTP {status}, {e.msg} at char {e.pos}): "
                f"{_snippet(text)!r}",
                status=status,
            ) from e


def resolve_api_key(api_key: str | None, *, env: str, service: str, signup_url: str) -> str:
    """The key given, else the environment's; a missing or blank one is a `ToolConfigurationError`."""
    key = api_key if api_key is not None else os.environ.get(env)
    if key is None or not key.strip():
        given = "was given an empty api_key" if api_key is not None else f"found no {env} in the environment"
        raise ToolConfigurationError(
            f"{service} needs an API key and {given}. Set it with `export {env}=<your key>` or pass "
            f"api_key=... to the tool. Get a key at {signup_url}."
        )
    key = key.strip()
    if not all("!" <= c <= "~" for c in key):
        # Sent as a header or query value: a non-ASCII character fails every call, a newline or space
        # is refused by the HTTP client with the key quoted in an error the model would read.
        source = "api_key" if api_key is not None else f"${env}"
        raise ToolConfigurationError(
            f"{service}'s API key ({source}) must be printable ASCII with no spaces or line breaks inside; "
            f"check that it was copied whole and alone. Set it with `export {env}=<your key>`."
        )
    return key


def _describe(body: bytes, content_type: str) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return "(empty body)"
    if "html" in content_type.lower() or text[:1] == "<":
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        if title:
            return f"(HTML page titled {title.group(1).strip()[:120]!r})"
        plain = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()
        return f"(HTML page: {_snippet(plain)!r})"
    return f"({_snippet(text)!r})"


def _snippet(text: str) -> str:
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _try_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None

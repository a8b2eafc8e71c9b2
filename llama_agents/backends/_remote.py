"""The shared part of every remote backend: HTTP with retries, streaming, and text back to Llama ids.

What it does: `RemoteBackend.complete` sends our own, exact Llama 3.1 prompt to a model server's raw
completion endpoint (never a chat endpoint, which would re-render the prompt with the server's
template and drop `<|python_tag|>` / `<|eom_id|>`), streams the reply, and turns the text back
into token ids with our tokenizer, special tokens allowed (it is model output, not user input), so
`ChatFormat.decode_assistant_message` and the agent work unchanged. The stop token the server
reports (or stripped) is put back at the end, so the stop reason survives the round trip.

Failures: connection errors, timeouts before the first byte, 429, 502, 503 and 504 are retried with
exponential backoff and full jitter (honouring `Retry-After`, in seconds or as an HTTP date) while
nothing has been yielded; once a token has been yielded a failure is never retried (the caller
already has part of the reply) and raises `BackendError` saying the reply was cut off. Bad
credentials, a model the server does not serve, or a bad request raise `UsageError`; a prompt the
server says is too long raises `PromptTooLongError` (the agent stops the run cleanly).

Concurrency: one `httpx.Client` (thread-safe, pooled) is shared by every call, so several agents in
threads can drive one backend. `last_stats` is the statistics of the last call that finished.

What it does not do: speak any particular engine's protocol (the subclasses in `openai.py`,
`ollama.py` and `llamacpp.py` do), detect engines (`remote.py`), or keep a KV cache (the server's
prefix cache does that).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from llama_agents._retry import backoff_delay, parse_retry_after
from llama_agents.errors import BackendError, PromptTooLongError, UsageError
from llama_agents.llama.tokenizer import Tokenizer

__all__ = ["RemoteBackend", "RemoteSettings", "RemoteStats", "StreamEnd", "stream_error"]

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_STOP_NAMES = ("<|eom_id|>", "<|eot_id|>", "<|end_of_text|>")
_HOLD_BACK = 2  # ids at the end of the text so far that later text may still merge with


@dataclass(frozen=True)
class RemoteSettings:
    """Timeouts and retries of a remote backend.

    - `connect_timeout`: seconds to open a connection.
    - `read_timeout`: the longest silence between two pieces of a streamed reply (a server still
      prefilling a long prompt sends nothing for a while: keep this generous).
    - `max_attempts`: attempts per completion, the first included (1 = no retry).
    - `backoff_base`, `backoff_max`: the wait before retry n is uniform in
      [0, min(backoff_max, backoff_base * 2**(n-1))]; a `Retry-After` up to `retry_after_max` wins.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    retry_after_max: float = 60.0

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise UsageError(f"RemoteSettings.{name} must be > 0, got {getattr(self, name)!r}")
        if not (isinstance(self.max_attempts, int) and self.max_attempts >= 1):
            raise UsageError(f"RemoteSettings.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        for name in ("backoff_base", "backoff_max", "retry_after_max"):
            if getattr(self, name) < 0:
                raise UsageError(f"RemoteSettings.{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RemoteStats:
    """What one remote completion cost, as far as the server tells (None: not reported)."""

    prompt_tokens: int
    prefilled: int | None
    reused: int | None
    generated: int
    ttft_s: float | None
    total_s: float


@dataclass
class StreamEnd:
    """How a server said its reply ended.

    `finished`: the server sent its end marker (done / stop / [DONE]); False means the stream was
    cut off. `length`: it stopped at the token limit. `stop_text`: the stop string or special token
    it matched, when it says. `stop_id`: the stop token id, when it says. `prefilled`: prompt ids
    it ran through the model, when it says.
    """

    finished: bool = False
    length: bool = False
    stop_text: str | None = None
    stop_id: int | None = None
    prefilled: int | None = None


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class RemoteBackend:
    """Base of the remote backends: the `Backend` protocol over one engine's HTTP API.

    `base_url`: the server root (`http://host:8000`). `tokenizer`: the Llama 3 tokenizer of the
    served model. `model`: the served model name (None where the engine does not need one).
    `api_key`: sent as `Authorization: Bearer`. `max_seq_len`: the context length when known.
    `transport`: an httpx transport (tests, proxies). Subclasses define `engine`, `_request` and
    `_events`.
    """

    engine = "remote"

    def __init__(
        self,
        base_url: str,
        tokenizer: Tokenizer,
        *,
        model: str | None = None,
        api_key: str | None = None,
        settings: RemoteSettings | None = None,
        max_seq_len: int | None = None,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise UsageError(f"tokenizer must be a llama_agents Tokenizer, got {type(tokenizer).__name__}")
        self.base_url = base_url.rstrip("/")
        self.tokenizer = tokenizer
        self.model = model
        self.settings = settings or RemoteSettings()
        self.max_seq_len = max_seq_len
        self.last_stats: RemoteStats | None = None
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        headers = {"User-Agent": "llama-agents"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        s = self.settings
        timeout = httpx.Timeout(s.read_timeout, connect=s.connect_timeout)
        self._client = httpx.Client(headers=headers, timeout=timeout, transport=transport)
        self._stop_ids = {name: tokenizer.special_tokens[name] for name in _STOP_NAMES}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> RemoteBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- what a subclass provides ----------------------------------------------------------------

    def _request(
        self, prompt_tokens: list[int], max_tokens: int, temperature: float, top_p: float
    ) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of one streaming completion request."""
        raise NotImplementedError

    def _events(self, response: httpx.Response, end: StreamEnd) -> Iterator[str | list[int]]:
        """Yield the reply's text pieces (or token ids, where the server sends them) from a
        streaming response; fill `end` as the server says."""
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------------------

    def prompt_text(self, prompt_tokens: list[int], *, strip_bos: bool) -> str:
        """The prompt as text with special tokens kept; without the leading `<|begin_of_text|>`
        when `strip_bos` (for servers that add it themselves when they tokenize text)."""
        if strip_bos and prompt_tokens and prompt_tokens[0] == self.tokenizer.bos_id:
            prompt_tokens = prompt_tokens[1:]
        return self.tokenizer.decode(prompt_tokens)

    @property
    def stop_strings(self) -> list[str]:
        return list(_STOP_NAMES)

    # -- the protocol ----------------------------------------------------------------------------

    def complete(
        self, prompt_tokens: list[int], *, max_tokens: int, temperature: float, top_p: float
    ) -> Iterator[int]:
        """Yield the reply's ids, the stop token included, stopping after it or after `max_tokens`.

        Bad arguments raise here, at the call, before any request.
        """
        if not prompt_tokens:
            raise UsageError("prompt_tokens is empty")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise UsageError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        if temperature < 0:
            raise UsageError(f"temperature must be >= 0, got {temperature!r}")
        if not 0 < top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {top_p!r}")
        if self.max_seq_len is not None and len(prompt_tokens) >= self.max_seq_len:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_tokens)} tokens; the served model's context is "
                f"{self.max_seq_len} (max_seq_len)"
            )
        path, body = self._request(list(prompt_tokens), max_tokens, float(temperature), float(top_p))
        return self._stream(path, body, len(prompt_tokens), max_tokens)

    def _stream(self, path: str, body: dict[str, Any], n_prompt: int, max_tokens: int) -> Iterator[int]:
        url = self.base_url + path
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            retokenizer = _Retokenizer(self.tokenizer)
            end = StreamEnd()
            yielded = 0
            ttft: float | None = None
            complete = False  # the reply is whole; what follows is the end marker and statistics
            try:
                with self._client.stream("POST", url, json=body) as response:
                    self._check_status(response)
                    for piece in self._events(response, end):
                        if complete:
                            continue
                        for token in retokenizer.feed(piece):
                            if ttft is None:
                                ttft = time.monotonic() - started
                            yield token
                            yielded += 1
                            if yielded >= max_tokens or token in self.tokenizer.stop_tokens:
                                complete = True
                                break
                if complete:
                    self._finish(n_prompt, yielded, end, ttft, started)
                    return
            except _Retry as e:
                if yielded or attempt >= self.settings.max_attempts:
                    raise BackendError(
                        f"{self.engine} server at {self.base_url}: {e} (after {attempt} attempts)"
                    ) from e
                self._wait(attempt, e.retry_after, str(e))
                continue
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if attempt >= self.settings.max_attempts:
                    raise BackendError(
                        f"cannot reach the {self.engine} server at {self.base_url} ({e}); is it running? "
                        f"(gave up after {attempt} attempts)"
                    ) from e
                self._wait(attempt, None, f"cannot connect: {e}")
                continue
            except (httpx.TransportError, BackendError) as e:
                if complete:  # lost only the end marker or statistics after the whole reply
                    logger.debug("%s: stream ended after the reply without its end: %s", self.engine, e)
                    self._finish(n_prompt, yielded, end, ttft, started)
                    return
                if isinstance(e, BackendError):
                    raise
                if yielded == 0 and attempt < self.settings.max_attempts:
                    self._wait(attempt, None, f"{type(e).__name__}: {e}")
                    continue
                raise BackendError(
                    f"the {self.engine} server at {self.base_url} cut the reply off after {yielded} "
                    f"tokens ({type(e).__name__}: {e or 'connection lost'}); nothing was added to the "
                    "conversation, the step can be retried"
                ) from e
            if not end.finished and yielded == 0 and attempt < self.settings.max_attempts:
                self._wait(attempt, None, "the stream ended before the reply began")
                continue
            break
        if not end.finished:
            raise BackendError(
                f"the {self.engine} server at {self.base_url} ended the stream after {yielded} tokens "
                "without saying the reply was done (cut off); the step can be retried"
            )
        for token in self._tail(retokenizer, end):
            if ttft is None:
                ttft = time.monotonic() - started
            yield token
            yielded += 1
            if yielded >= max_tokens or token in self.tokenizer.stop_tokens:
                break
        self._finish(n_prompt, yielded, end, ttft, started)

    def _tail(self, retokenizer: _Retokenizer, end: StreamEnd) -> list[int]:
        """The ids not yet yielded, plus the stop token the server matched but did not send."""
        ids = retokenizer.flush()
        if end.length or any(t in self.tokenizer.stop_tokens for t in ids):
            return ids
        stop = end.stop_id if end.stop_id in self.tokenizer.stop_tokens else None
        if stop is None and end.stop_text is not None:
            stop = self._stop_ids.get(end.stop_text.strip())
        if stop is None:
            # The server stopped at an end-of-generation token and stripped it without naming it
            # (Ollama, llama.cpp on EOS, vLLM on the primary EOS): Llama 3.1 ends a built-in tool
            # call (a reply that starts with <|python_tag|>) with <|eom_id|>, anything else with
            # <|eot_id|>.
            first = retokenizer.first_id
            stop = self.tokenizer.eom_id if first == self.tokenizer.python_tag_id else self.tokenizer.eot_id
            logger.debug("%s: the server did not name the stop token; inferred id %d", self.engine, stop)
        return [*ids, stop]

    def _finish(
        self, n_prompt: int, generated: int, end: StreamEnd, ttft: float | None, started: float
    ) -> None:
        prefilled = end.prefilled if isinstance(end.prefilled, int) else None
        reused = n_prompt - prefilled if prefilled is not None and prefilled <= n_prompt else None
        self.last_stats = RemoteStats(
            n_prompt, prefilled, reused, generated, ttft, time.monotonic() - started
        )

    # -- HTTP ------------------------------------------------------------------------------------

    def _check_status(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        raw = response.read()[:4000]
        message = _error_message(raw)
        status = response.status_code
        where = f"the {self.engine} server at {self.base_url}"
        if status in _RETRY_STATUSES:
            raise _Retry(f"HTTP {status}: {message}", parse_retry_after(response.headers.get("retry-after")))
        if status in (401, 403):
            raise UsageError(
                f"{where} rejected the credentials (HTTP {status}: {message}); pass api_key= or set "
                "LLAMA_AGENTS_API_KEY"
            )
        low = message.lower()
        if _says_too_long(message):
            raise PromptTooLongError(f"{where} says the prompt is too long: {message}")
        if status == 404 and "model" in low:
            raise UsageError(f"{where} does not serve the model {self.model!r}: {message}")
        if status == 404:
            raise UsageError(
                f"{where} has no such endpoint (HTTP 404: {message}); is it a {self.engine} server?"
            )
        if status < 500:
            raise UsageError(f"{where} refused the request (HTTP {status}: {message})")
        raise BackendError(f"{where} failed (HTTP {status}: {message})")

    def _wait(self, attempt: int, retry_after: float | None, reason: str) -> None:
        s = self.settings
        with self._rng_lock:
            delay = backoff_delay(
                attempt,
                retry_after,
                base=s.backoff_base,
                maximum=s.backoff_max,
                retry_after_max=s.retry_after_max,
                rng=self._rng,
            )
        logger.warning("%s at %s: %s; retry %d in %.2fs", self.engine, self.base_url, reason, attempt, delay)
        time.sleep(delay)


class _Retokenizer:
    """Text pieces in, Llama ids out, as soon as they can no longer change.

    The last few ids of the text so far may still merge with text that follows, and an unfinished
    `<|...` may become a special token, so those are held back until more text (or the end) comes.
    The ids yielded always decode to a prefix of the text; the rest is encoded at the end, so the
    ids decode to exactly the server's text.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending = ""
        self.first_id: int | None = None

    def feed(self, text: str | list[int]) -> list[int]:
        if isinstance(text, list):  # the server's own ids: exact, nothing to re-tokenize
            return self._note([*self.flush(), *text])
        if not text:
            return []
        self.pending += text
        open_at = self.pending.rfind("<|")
        settled = self.pending if open_at < 0 or "|>" in self.pending[open_at:] else self.pending[:open_at]
        ids = self.tokenizer.encode(settled, allowed_special="all")[:-_HOLD_BACK]
        while ids:
            try:
                prefix = self.tokenizer.decode_bytes(ids).decode("utf-8")
            except UnicodeDecodeError:
                ids = ids[:-1]
                continue
            assert self.pending.startswith(prefix)
            self.pending = self.pending[len(prefix) :]
            break
        return self._note(ids)

    def flush(self) -> list[int]:
        ids = self.tokenizer.encode(self.pending, allowed_special="all") if self.pending else []
        self.pending = ""
        return self._note(ids)

    def _note(self, ids: list[int]) -> list[int]:
        if ids and self.first_id is None:
            self.first_id = ids[0]
        return ids


def _error_message(raw: bytes) -> str:
    import json

    text = raw.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:300] or "(empty body)"
    return describe_error(payload)


def describe_error(payload: Any) -> str:
    """The message of an engine's JSON error (OpenAI, vLLM, Ollama and llama.cpp shapes)."""
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, str):
            return error
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(payload.get("message"), str):
            return payload["message"]
        if isinstance(payload.get("detail"), str):
            return payload["detail"]
    return str(payload)[:300]


def _says_too_long(message: str) -> bool:
    """Whether an engine's error message says the prompt does not fit its context: llama.cpp's
    "request (N tokens) exceeds the available context size (M tokens)", vLLM's "This model's
    maximum context length is M tokens...", OpenAI's "context_length_exceeded"."""
    low = message.lower()
    return "context" in low and ("length" in low or "exceed" in low or "too long" in low)


def stream_error(engine: str, payload: Any) -> Exception:
    """The exception for an error an engine sent inside a stream (an SSE `error:` event or a JSON
    line with `error`): `PromptTooLongError` when it says the prompt does not fit, else
    `BackendError`."""
    message = describe_error(payload)
    if _says_too_long(message):
        return PromptTooLongError(f"the {engine} server says the prompt is too long: {message}")
    return BackendError(f"the {engine} server failed mid-reply: {message}")


def iter_sse_data(response: httpx.Response) -> Iterator[str]:
    """The `data:` payloads of a server-sent-event stream (multi-line data joined by newlines)."""
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
        elif field == "error":  # llama.cpp sends `error: {...}` lines
            yield '{"error": ' + value.strip() + "}"
    if data:
        yield "\n".join(data)

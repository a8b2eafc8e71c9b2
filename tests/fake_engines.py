"""Local model servers on 127.0.0.1 that speak vLLM's, Ollama's, llama.cpp's and a generic
OpenAI-compatible server's completion protocols, replaying scripted Llama 3.1 replies.

Each reply is the text of an assistant message exactly as Llama 3.1 writes it, special tokens
included (`'<|python_tag|>brave_search.call(query="x")<|eom_id|>'`), or a function of the prompt
text. The server tokenizes it with the real tokenizer, cuts it after the first stop token or at the
request's token limit, and streams it one token per event in the engine's own shapes:

- `vllm`: `/v1/models` (`owned_by: "vllm"`, `max_model_len`), `/v1/completions` SSE chunks
  `{"choices": [{"text", "finish_reason", "stop_reason"}]}`; the stop token's text is sent only when
  `include_stop_str_in_output` and `skip_special_tokens: false` ask for it; `stop_reason` is the
  token id for `<|eom_id|>` / `<|end_of_text|>` (stop_token_ids) and null for `<|eot_id|>` (the
  model's EOS), as vLLM does for Llama 3.1 (protocol.py CompletionResponseStreamChoice.stop_reason:
  "the stop string or token id ..., None ... including the EOS token"; v1 engine versions that also
  match stop strings on a stop token's text report the string instead); then a usage chunk and
  `data: [DONE]`.
- `openai`: a generic server: text prompts, the stop string removed from the text, no
  `stop_reason`.
- `ollama`: `/api/tags`, `/api/generate` NDJSON lines with `response`, the last `done: true`,
  `done_reason`, `prompt_eval_count`; the stop token is stripped, as Ollama does.
- `llamacpp`: `/props`, `/completion` SSE chunks `{"content", "tokens": [id], "stop": false}` (special
  tokens rendered as "", the end-of-generation token sent as its own chunk, no chunk for a token
  that ends inside a UTF-8 character) and a last `{"stop": true, "stop_type", "stopping_word",
  "timings"}`; a prompt of `max_model_len` (n_ctx) tokens or more gets HTTP 400
  `exceed_context_size_error`.

Failures are scripted per completion request with `fail(...)`: an HTTP status (429 / 503 with
`Retry-After`, 500, ...), or a connection dropped after n events. Unknown model names get the
engine's own 404 body. Test code, not part of the package.
"""

from __future__ import annotations

import codecs
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llama_agents.llama.tokenizer import Tokenizer

__all__ = ["ENGINE_KINDS", "Failure", "FakeEngine"]

ENGINE_KINDS = ("vllm", "openai", "ollama", "llamacpp")
Reply = str | Callable[[str], str]


@dataclass
class Failure:
    """What the next completion request gets instead of a reply: `status` (with `body` and
    `headers`), or, with `drop_after` set, a normal stream cut after that many events."""

    status: int = 503
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None


class FakeEngine:
    """One fake engine; use as a context manager. `requests` holds each completion request body,
    `prompts` the prompt ids, `completions` the ids streamed (stop token included)."""

    def __init__(
        self,
        kind: str,
        tokenizer: Tokenizer,
        replies: Sequence[Reply] = (),
        *,
        models: Sequence[str] = ("meta-llama/Llama-3.1-8B-Instruct",),
        max_model_len: int | None = None,
        api_key: str | None = None,
        delay: float = 0.0,
        listing_delay: float = 0.0,
    ) -> None:
        assert kind in ENGINE_KINDS, kind
        self.kind = kind
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.models = list(models)
        self.max_model_len = max_model_len
        self.api_key = api_key
        self.delay = delay
        self.listing_delay = listing_delay  # seconds before answering any GET (a busy server)
        self.requests: list[dict[str, Any]] = []
        self.prompts: list[list[int]] = []
        self.completions: list[list[int]] = []
        self.failures: deque[Failure] = deque()
        self.failures_at: dict[int, Failure] = {}
        self.attempts = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def fail(self, *failures: Failure) -> None:
        """The next completion requests get these failures, in order."""
        self.failures.extend(failures)

    def fail_at(self, attempt: int, failure: Failure) -> None:
        """Completion request number `attempt` (1-based, counting every request) gets `failure`."""
        self.failures_at[attempt] = failure

    def __enter__(self) -> FakeEngine:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- the engine's behaviour ------------------------------------------------------------------

    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list):
            return [int(t) for t in prompt]
        ids = self.tokenizer.encode(prompt, allowed_special="all")
        return [self.tokenizer.bos_id, *ids]  # the server adds BOS to a text prompt

    def _generate(self, prompt_ids: list[int], limit: int) -> tuple[list[int], str]:
        """The reply ids (stop token included when reached) and why it ended: stop / length."""
        with self._lock:
            index = len(self.completions)
            self.prompts.append(prompt_ids)
            generated: list[int] = []
            self.completions.append(generated)
        if index >= len(self.replies):
            raise AssertionError(f"the script has {len(self.replies)} replies; one more was asked for")
        reply = self.replies[index]
        text = reply(self.tokenizer.decode(prompt_ids)) if callable(reply) else reply
        ids = self.tokenizer.encode(text, allowed_special="all")
        for token in ids[:limit]:
            generated.append(token)
            if token in self.tokenizer.stop_tokens:
                return generated, "stop"
        return generated, "length"

    def _pieces(self, ids: list[int]) -> list[str]:
        """Each id's text as an engine streams it: UTF-8 split across ids is held until whole."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return [decoder.decode(self.tokenizer.decode_bytes([token])) for token in ids]

    def _served(self, name: str | None) -> bool:
        if self.kind == "llamacpp" or (name is None and self.kind == "openai"):
            return True
        return name in self.models or (self.kind == "ollama" and f"{name}:latest" in self.models)

    def _not_found(self, name: str | None) -> dict[str, Any]:
        if self.kind == "ollama":
            # ollama server/routes.go: 404 gin.H{"error": fmt.Sprintf("model %q not found, try
            # pulling it first", name)}
            return {"error": f'model "{name}" not found, try pulling it first'}
        # vLLM entrypoints/openai/protocol.py ErrorResponse{error: ErrorInfo} (older vLLM sent the
        # ErrorInfo fields at the top level with "object": "error"; describe_error reads both)
        return {
            "error": {
                "message": f"The model `{name}` does not exist.",
                "type": "NotFoundError",
                "param": None,
                "code": 404,
            }
        }

    def _too_long(self, prompt_ids: list[int]) -> dict[str, Any] | None:
        """llama.cpp's refusal of a prompt that does not fit the slot (server-context.cpp: a
        prompt of n_ctx tokens or more; server-common.cpp format_error_response): HTTP 400."""
        if self.kind != "llamacpp" or not self.max_model_len or len(prompt_ids) < self.max_model_len:
            return None
        n, ctx = len(prompt_ids), self.max_model_len
        return {
            "error": {
                "code": 400,
                "message": f"request ({n} tokens) exceeds the available context size ({ctx} tokens), "
                "try increasing it",
                "type": "exceed_context_size_error",
                "n_prompt_tokens": n,
                "n_ctx": ctx,
            }
        }

    def _events(self, body: dict[str, Any]) -> tuple[list[bytes], bool]:
        """The encoded events of one completion and whether the stream is line-delimited JSON."""
        tok = self.tokenizer
        if self.kind == "ollama":
            options = body.get("options") or {}
            ids, why = self._generate(self._prompt_ids(body["prompt"]), options.get("num_predict", 128))
            events = []
            for token, piece in zip(ids, self._pieces(ids), strict=True):
                if token in tok.stop_tokens:
                    break
                events.append({"model": body["model"], "response": piece, "done": False})
            events.append(
                {
                    "model": body["model"],
                    "created_at": "2024-09-21T10:00:00Z",
                    "response": "",
                    "done": True,
                    "done_reason": why,
                    "prompt_eval_count": 7,
                    "eval_count": len(ids),
                }
            )
            return [json.dumps(e).encode() + b"\n" for e in events], True
        if self.kind == "llamacpp":
            # As llama.cpp's server does (tools/server/server-context.cpp `process_token`,
            # `send_partial_response`; server-task.cpp `to_json_non_oaicompat`): one event per
            # token with `tokens: [id]` (always, when streaming); special tokens rendered as ""
            # (a server started without --special); a token ending inside a UTF-8 character sends
            # no event, the next one carries the whole character but only its own id; the EOG
            # token is sent as its own event; the last event has `stop_type` and `stopping_word`
            # (no `stopped_eos` / `stopped_word` / `stopped_limit` since late 2024).
            prompt_ids = self._prompt_ids(body["prompt"])
            n_predict = body.get("n_predict", -1)  # -1 (the default): until EOS
            ids, why = self._generate(prompt_ids, n_predict if n_predict >= 0 else 1 << 30)
            events = []
            held = b""
            for n, token in enumerate(ids, 1):
                held += b"" if token >= tok.bos_id else tok.decode_bytes([token])
                try:
                    text = held.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                held = b""
                events.append(
                    {
                        "index": 0,
                        "content": text,
                        "tokens": [token],
                        "stop": False,
                        "id_slot": 0,
                        "tokens_predicted": n,
                        "tokens_evaluated": len(prompt_ids),
                    }
                )
            events.append(
                {
                    "index": 0,
                    "content": "",
                    "tokens": [],
                    "id_slot": 0,
                    "stop": True,
                    "model": "gpt-3.5-turbo",
                    "tokens_predicted": len(ids),
                    "tokens_evaluated": len(prompt_ids),
                    "truncated": False,
                    "stop_type": "eos" if why == "stop" else "limit",
                    "stopping_word": "",
                    "tokens_cached": len(prompt_ids) + len(ids) - 1,
                    "timings": {"prompt_n": 5, "predicted_n": len(ids)},
                }
            )
            return [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events], False
        ids, why = self._generate(self._prompt_ids(body["prompt"]), body.get("max_tokens", 16))
        keep_stop = (
            self.kind == "vllm"
            and body.get("include_stop_str_in_output") is True
            and body.get("skip_special_tokens") is False
        )
        chunks = []
        stop_reason: int | str | None = None
        for token, piece in zip(ids, self._pieces(ids), strict=True):
            special = token >= tok.bos_id
            if token in tok.stop_tokens:
                stop_reason = None if token == tok.eot_id else token
                if not keep_stop:
                    break
            text = piece
            if special and self.kind == "vllm" and body.get("skip_special_tokens", True):
                text = ""
            chunks.append({"index": 0, "text": text, "logprobs": None, "finish_reason": None})
        base = {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1726900000,
            "model": body.get("model"),
        }
        final = {"index": 0, "text": "", "logprobs": None, "finish_reason": why}
        if self.kind == "vllm":
            for chunk in chunks:
                chunk["stop_reason"] = None
            final["stop_reason"] = stop_reason
        events: list[dict[str, Any]] = [{**base, "choices": [c]} for c in chunks]
        events.append({**base, "choices": [final]})
        if self.kind == "vllm":
            usage = {"prompt_tokens": len(self.prompts[-1]), "completion_tokens": len(ids)}
            usage["prompt_tokens_details"] = {"cached_tokens": 3}
            events.append({**base, "choices": [], "usage": usage})
        encoded = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
        return [*encoded, b"data: [DONE]\n\n"], False

    # -- HTTP ------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if engine.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {engine.api_key}":
                    return True
                self._json(401, {"error": {"message": "Unauthorized", "type": "invalid_request_error"}})
                return False

            def do_GET(self) -> None:
                if engine.listing_delay:
                    time.sleep(engine.listing_delay)
                if not self._authorized():
                    return
                kind = engine.kind
                if self.path == "/api/tags" and kind == "ollama":
                    self._json(200, {"models": [{"name": m, "model": m, "size": 1} for m in engine.models]})
                elif self.path == "/props" and kind == "llamacpp":
                    settings = {"n_ctx": engine.max_model_len or 4096, "temperature": 0.8}
                    self._json(200, {"default_generation_settings": settings, "total_slots": 1})
                elif self.path == "/v1/models":
                    owner = {"vllm": "vllm", "ollama": "library", "llamacpp": "llamacpp"}.get(kind, "system")
                    data = [{"id": m, "object": "model", "owned_by": owner} for m in engine.models]
                    if kind == "vllm" and engine.max_model_len:
                        for entry in data:
                            entry["max_model_len"] = engine.max_model_len
                    self._json(200, {"object": "list", "data": data})
                else:
                    self._json(404, {"error": "Not Found"})

            def do_POST(self) -> None:
                if not self._authorized():
                    return
                expected = {"ollama": "/api/generate", "llamacpp": "/completion"}.get(
                    engine.kind, "/v1/completions"
                )
                if self.path != expected:
                    self._json(404, {"error": "Not Found"})
                    return
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with engine._lock:
                    engine.requests.append(body)
                    engine.attempts += 1
                    failure = engine.failures.popleft() if engine.failures else None
                    failure = engine.failures_at.pop(engine.attempts, failure)
                if not engine._served(body.get("model")):
                    self._json(404, engine._not_found(body.get("model")))
                    return
                too_long = engine._too_long(engine._prompt_ids(body["prompt"])) if "prompt" in body else None
                if too_long is not None:
                    self._json(400, too_long)
                    return
                if failure is not None and failure.drop_after is None:
                    payload = failure.body or {"error": {"message": f"HTTP {failure.status}"}}
                    self._json(failure.status, payload, failure.headers)
                    return
                events, ndjson = engine._events(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson" if ndjson else "text/event-stream")
                self.end_headers()
                for n, event in enumerate(events):
                    if failure is not None and n == failure.drop_after:
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(event)
                    self.wfile.flush()
                    if engine.delay:
                        time.sleep(engine.delay)

        return Handler

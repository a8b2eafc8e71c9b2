"""A real HTTP server on 127.0.0.1 that replays scripted responses, for testing HTTP clients.

`ReplayServer` is a threaded `http.server` on an ephemeral port. Script each path with a list of
`Reply`s; requests to that path get them in order, and the last one repeats once the list runs
out. A reply can set the status, headers and body, wait before answering (`delay`), drop the
connection without answering (`drop`), or stream a large body (`stream_bytes`). Every request is
recorded (method, path, query, headers) so tests can assert what the client sent.

    with ReplayServer() as server:
        server.script("/v2/query", Reply(status=500), Reply(body={"ok": True}))
        ... client against server.base_url ...
        assert server.requests[0].query["input"] == ["2+2"]

It answers HTTP/1.0 (one request per connection, no keep-alive), which keeps each scripted reply
independent. Used by the tool and agent tests; it is test code, not part of the package.

For the web tools' tests it also gives `FAST_HTTP`, retry settings short enough that their retry and
timeout tests take a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from llama_agents.tools import HttpSettings

__all__ = [
    "DATA_DIR",
    "FAST_HTTP",
    "RecordedRequest",
    "ReplayServer",
    "Reply",
    "load_data",
    "unused_port_url",
]

DATA_DIR = Path(__file__).parent / "data"

# Short timeouts and backoff, so that the web tools' retry and timeout tests run in well under a second.
FAST_HTTP = HttpSettings(
    timeout=0.5, max_attempts=3, backoff_base=0.02, backoff_max=0.05, retry_after_max=1.0, total_timeout=3.0
)


def load_data(name: str) -> bytes:
    """The bytes of a recorded response in tests/data/."""
    return (DATA_DIR / name).read_bytes()


@dataclass
class Reply:
    """One scripted response.

    `body` may be bytes, str (sent as UTF-8) or a JSON-able dict/list (sent as JSON).
    `content_type` defaults to application/json for dict/list bodies and is otherwise only sent
    when given. `delay` waits that many seconds before answering; `drop` closes the connection
    without a response; `stream_bytes` sends that many bytes of `stream_chunk` repeated, with no
    Content-Length, until done or the client hangs up; `content_length` overrides the header.
    """

    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    delay: float = 0.0
    drop: bool = False
    stream_bytes: int = 0
    stream_chunk: bytes = b"x" * 65536
    content_length: int | None = None

    def encoded(self) -> tuple[bytes, str | None]:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode(), self.content_type or "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), self.content_type
        return self.body, self.content_type


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    at: float  # time.monotonic() when it arrived


class ReplayServer:
    """Scripted HTTP replies on 127.0.0.1; use as a context manager."""

    def __init__(self) -> None:
        self._scripts: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[RecordedRequest] = []
        self.bytes_sent: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="replay-server",
            daemon=True,
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer requests to `path` with `replies` in order; the last one repeats."""
        if not replies:
            raise ValueError("script() needs at least one Reply")
        with self._lock:
            self._scripts[path] = deque(replies)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_reply(self, path: str) -> Reply | None:
        with self._lock:
            queue = self._scripts.get(path)
            if not queue:
                return None
            return queue.popleft() if len(queue) > 1 else queue[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                record = RecordedRequest(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    at=time.monotonic(),
                )
                with server._lock:
                    server.requests.append(record)
                reply = server._next_reply(parts.path)
                if reply is None:
                    reply = Reply(status=404, body={"error": f"no reply scripted for {parts.path}"})
                if reply.delay and server._stopping.wait(reply.delay):
                    return
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                # The client may hang up mid-body, as a size-limited client should.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                    self._send(reply, parts.path)

            def _send(self, reply: Reply, path: str) -> None:
                body, content_type = reply.encoded()
                self.send_response(reply.status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.stream_bytes:
                    if reply.content_length is not None:
                        self.send_header("Content-Length", str(reply.content_length))
                    self.end_headers()
                    sent = 0
                    while sent < reply.stream_bytes and not server._stopping.is_set():
                        chunk = reply.stream_chunk[: reply.stream_bytes - sent]
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        with server._lock:
                            server.bytes_sent[path] = server.bytes_sent.get(path, 0) + len(chunk)
                    return
                length = reply.content_length if reply.content_length is not None else len(body)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def unused_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"

"""The HTTP server under every platform fake: a real ``ThreadingHTTPServer`` in a daemon thread.

A fake hands it one function, ``respond(Request) -> Answer``. The server reads each request whole,
calls ``respond`` on that request's own thread (so a slow answer delays no other client), and writes
the answer with its ``Content-Length`` over HTTP/1.1 keep-alive (or, with ``keep_alive=False``, one
request per connection, as an HTTP/1.0 server would). :meth:`FakeHTTPServer.stop` ends the
loop, wakes handler threads parked on idle keep-alive connections and joins the thread, so a test's
fake leaves no thread or socket behind. Nothing is raised into a client or logged: a client that hung
up mid-answer is expected (a timeout being tested), and an exception in ``respond`` answers HTTP 500.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: dict[str, str]  # the last value of a repeated name
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: Any) -> Answer:
        return cls(status, json.dumps(value, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")


Respond = Callable[[Request], Answer]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], respond: Respond, keep_alive: bool) -> None:
        self.respond, self.keep_alive = respond, keep_alive
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.live_lock:
            self.live.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.live_lock:
            self.live.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections so server_close() can join them."""
        with self.live_lock:
            for sock in self.live:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is expected, not an error


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes; no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        parts = urlsplit(self.path)
        request = Request(self.command, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)),
                          {name.lower(): value for name, value in self.headers.items()},
                          self.rfile.read(length) if length else b"")
        try:
            answer = self.server.respond(request)
        except Exception as exc:  # the fake's own bug: say so to the client instead of hanging up
            answer = Answer(500, f"fake server error: {type(exc).__name__}: {exc}".encode(), "text/plain")
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if not self.server.keep_alive:
            self.send_header("Connection", "close")  # and the handler closes it after this answer
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)


class FakeHTTPServer:
    """Serves ``respond`` on ``host:port`` (127.0.0.1 and a free port by default) from :meth:`start` to :meth:`stop`."""

    def __init__(self, respond: Respond, *, host: str = "127.0.0.1", port: int = 0, name: str = "fake-http",
                 keep_alive: bool = True) -> None:
        self.respond, self.address, self.name, self.keep_alive = respond, (host, port), name, keep_alive
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is None:
            self._server = _Server(self.address, self.respond, self.keep_alive)
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name=self.name,
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.drop_connections()
        server.server_close()
        thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name} is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://host:port``; a wildcard host (``0.0.0.0``) is reached on 127.0.0.1."""
        host = self.address[0] if self.address[0] not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        return f"http://{host}:{self.port}"


class LoopbackFake:
    """A platform fake served by one :class:`FakeHTTPServer`: start/stop, a context manager, its port and base URL.

    ``stopping`` is set while it stops, so an answer waiting out an injected delay wakes at once.
    """

    def __init__(self, respond: Respond, *, host: str = "127.0.0.1", port: int = 0, name: str = "fake-http",
                 keep_alive: bool = True) -> None:
        self.stopping = threading.Event()
        self._http = FakeHTTPServer(respond, host=host, port=port, name=name, keep_alive=keep_alive)

    def start(self) -> Self:
        self.stopping.clear()
        self._http.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._http.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def base_url(self) -> str:
        return self._http.base_url

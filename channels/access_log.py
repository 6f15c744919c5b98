"""The gateway's request ids and access log: one ASGI middleware around every route.

Each HTTP request and WebSocket handshake gets a request id: the caller's ``X-Request-ID`` when it is acceptable
(:func:`models.infra.logs.acceptable_request_id`: 1-128 characters of ``A-Za-z0-9._:/+=@-``), else a new one. It is
set in :data:`models.infra.logs.REQUEST_ID` for everything that runs for the request (log lines carry it), and
echoed in the HTTP response's ``X-Request-ID`` header.

With ``KEFU_ACCESS_LOG`` on (the default) each HTTP request ends with one line on the ``kefu.access`` logger:
method, path, status, duration in ms, request id. The path never includes the query string (WeChat and WeCom
callbacks carry their signatures there, the web chat its visitor token) and no body is ever read. Health checks and
scrapes (``/healthz``, ``/readyz``, ``/metrics``) log at DEBUG so a probe every few seconds does not drown the rest;
an operator silences the whole log with ``KEFU_ACCESS_LOG=false`` or by raising ``kefu.access``'s level.

:class:`Gateway` puts the middleware outside Starlette's server-error handler, so a request that failed is logged
with the status it was answered with (the handler's 503) and carries its id too. Never raises for a request.
"""

from __future__ import annotations

import logging
import time

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.infra import logs

access_log = logging.getLogger("kefu.access")

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given = logs.acceptable_request_id(value.decode("latin-1"))
            if given is not None:
                return given
    return logs.new_request_id()


class RequestIds:
    """ASGI middleware: the request id in context and in the response, and the access log line."""

    def __init__(self, app: ASGIApp, *, log_requests: bool = True) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", ()),
                                                   (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        with logs.request_scope(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self.log_requests and scope["type"] == "http":
                    path = scope.get("path", "")
                    access_log.log(logging.DEBUG if path in PROBES else logging.INFO, "%s %s %d %.1fms",
                                   scope.get("method", ""), path, status, (time.perf_counter() - started) * 1000)


class Gateway(Starlette):
    """A Starlette app whose outermost layer is :class:`RequestIds` (outside even the server-error handler)."""

    log_requests = True

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIds(super().build_middleware_stack(), log_requests=self.log_requests)

"""The acknowledgement a platform waits for, timed: each channel route's request until its response starts.

:func:`timed` wraps one of a channel adapter's HTTP routes so that the time from the request reaching the route to
the first byte of its response is observed in ``kefu_ack_seconds{channel, route, method}`` (route: the path
template, never the path with an account or id in it). WebSocket routes are left as they are: a socket's lifetime
is no acknowledgement (the web chat times each message frame's ``accepted`` frame itself, method ``WS``). A refusal
(an ``HTTPException``: a bad signature, a malformed body) is answered through the route and observed like any
answer; a request that fails with an unexpected error is not (the gateway's server-error handler answers it outside
the route, and logs it).
"""

from __future__ import annotations

import time

from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from models.infra import metrics


def timed_routes(routes: list[BaseRoute], channel: str) -> list[BaseRoute]:
    """A channel adapter's routes, each HTTP one timed."""
    return [timed(route, channel) for route in routes]


def timed(route: BaseRoute, channel: str) -> BaseRoute:
    """``route`` with its acknowledgement timed (an HTTP route), or unchanged (any other route)."""
    if not isinstance(route, Route):
        return route
    inner, template = route.app, route.path

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":  # once per request (ASGI)
                metrics.acked(channel, template, scope["method"], time.perf_counter() - started)
            await send(message)

        await inner(scope, receive, timed_send)

    route.app = app
    return route

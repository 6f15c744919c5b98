"""``GET /console/api/events``: the console's live updates as Server-Sent Events.

The stream relays every event on the bus topic ``desk`` (:data:`models.desk.TOPIC`: ``message``, ``reply``,
``handler``, ``agent_reply``, ``typing``…, each ``{"type", "conversation_id", …}``) as one ``data:`` line of
JSON. It opens with ``event: ready`` — sent on every (re)connection, the page's cue to re-sync what it shows,
since events published while it was away are not replayed — and ``retry: 2000`` (the browser reconnects after
2 s). Every :data:`KEEPALIVE_S` without events a comment line keeps proxies from closing the connection, and each
of those beats (and the first) is also the agent's sign of life (``agent.seen_at``: models.desk counts them as
present for ``KEFU_DESK_PRESENCE_S``). Closing the stream marks nothing: presence simply expires. A beat that
finds the session gone (logged out, expired, account disabled) sends ``event: expired`` and ends the stream.

Events are fire-and-forget (a lost one costs only liveness: the page reloads what an event names from the
database). A slow reader's queue is bounded by the listener; its surplus events are dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from sqlalchemy import update
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from channels.console.auth import COOKIE
from channels.console.context import ConsoleContext
from models import desk
from models.envelope import utcnow
from models.infra.db import transaction
from models.tables import AgentRecord

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
PATH = "/console/api/events"


def events_routes(ctx: ConsoleContext) -> list[BaseRoute]:
    return [Route(PATH, EventStream(ctx).stream)]


class EventStream:
    def __init__(self, ctx: ConsoleContext) -> None:
        self._ctx = ctx

    async def stream(self, request: Request) -> Response:
        agent = await self._ctx.auth.agent(request)
        token = request.cookies.get(COOKIE, "")
        queue = self._ctx.listener.subscribe(desk.TOPIC)
        return StreamingResponse(self._frames(agent.id, token, queue), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _frames(self, agent_id: int, token: str,
                      queue: asyncio.Queue[dict[str, object]]) -> AsyncIterator[str]:
        try:
            await self._beat(agent_id, token)
            yield "retry: 2000\nevent: ready\ndata: {}\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    if not await self._beat(agent_id, token):
                        yield "event: expired\ndata: {}\n\n"  # logged out, expired or disabled: no more events
                        return
                    yield ": keepalive\n\n"
                    continue
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        finally:  # the browser went away (Starlette cancels the stream) or the gateway stops
            self._ctx.listener.unsubscribe(desk.TOPIC, queue)

    async def _beat(self, agent_id: int, token: str) -> bool:
        """The agent's sign of life; False when the session has ended since the stream opened."""
        try:
            return await run_in_threadpool(self._seen, agent_id, token)
        except Exception as exc:  # a database blip costs one beat, not the stream
            log.warning("console presence beat failed: %s", type(exc).__name__)
            return True

    def _seen(self, agent_id: int, token: str) -> bool:
        if self._ctx.auth.session_of(token) is None:
            return False
        with transaction(self._ctx.sessions) as session:
            session.execute(update(AgentRecord).where(AgentRecord.id == agent_id).values(seen_at=utcnow()))
        return True

"""Web chat channel: HTTP API, a WebSocket that streams replies token by token, and its outbound.

Routes (all JSON; errors are ``{"error": {"code", "message"}}``):

- ``POST /v1/web/sessions`` → 201 ``{visitor_id, token, expires_at}``: a new anonymous visitor.
- ``POST /v1/web/messages`` ``{visitor_id, text, client_msg_id?}`` with ``Authorization: Bearer
  <token>`` → 202 ``{message_id, duplicate}``. 400 malformed JSON, 401/403 bad token, 413 text or
  body too long, 415 not JSON, 422 missing/empty fields. A rejected request leaves no row.
- ``GET /v1/web/conversations/{visitor_id}`` with the token → the history.
- ``WS /v1/web/ws?token=…`` (Origin checked against the allowlist). Client frames: ``message``
  ``{text, client_msg_id?}``, ``ack`` ``{reply_id}``, ``ping``. Server frames: ``accepted``,
  ``token`` ``{message_id, text}``, ``reply`` ``{reply_id, message_id, text}``, ``error``
  ``{code, message}`` (the connection stays open), ``pong``, ``status`` ``{state: "degraded" | "ok"}``.

Delivery is at-least-once: a reply is pushed live through the bus, and again from the database on
(re)connect and every few seconds until the client acks it; clients drop repeated ``reply_id``\\ s.
After a socket has sent the ``reply`` for a message it sends no more ``token`` frames for it.
A socket sends ``reply`` frames in message order: a live reply goes out after every earlier stored reply of
the conversation (read from the database when it arrives), whatever order the live events came in.

Under a database outage sockets stay open: they get ``status`` ``degraded`` (then ``ok``), new sockets are
accepted, a ``message`` frame gets an ``error`` ``unavailable`` (send it again) and an ``ack`` one an
``error`` ``ack_not_recorded`` (the reply is sent again). A visitor holds at most
``KEFU_WEB_MAX_SOCKETS_PER_VISITOR`` sockets per gateway process: one more closes the oldest with code
4008; idle sockets cost no database work of their own (:mod:`channels.web_sockets`).

Every visitor message goes through the same dialogue decision as every channel
(:meth:`~channels.base.ChannelAdapter.take`): an FAQ hit is answered at once without the model, and
a request for a person gets ``handoff_unavailable_reply`` (no person can take a web conversation
yet: its hand-off port is the base one); those replies reach the socket like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from channels import visitor_token
from channels.base import Channel, ChannelAdapter, DeliveryProgress, Outbound, RequestRejected
from channels.http import clean_text, parse_json_object, require_unicode
from channels.web_sockets import REPLACED, REPLACED_REASON, RESEND_INTERVAL_S, SocketHub
from models import transcript
from models.envelope import ConversationKey, Inbound, Reply, utcnow
from models.infra import metrics
from models.infra.db import transaction
from models.transcript import ReplyRow

if TYPE_CHECKING:
    from channels.base import ChannelContext

log = logging.getLogger(__name__)

CHANNEL = "web"
WS_PATH = "/v1/web/ws"  # the chat socket; its message frames' acknowledgements are timed as method "WS"
SHOW_ACKED_SINCE_S = 5.0
_CLIENT_MSG_ID_MAX = 64


def clean_client_msg_id(value: Any, visitor_id: str) -> str:
    """The message's dedup key: the client's idempotency key *of this visitor* (two visitors who both send "1"
    send two messages), or a fresh one when the client sends none."""
    if value is None:
        return "srv-" + uuid.uuid4().hex
    if not isinstance(value, str) or not 1 <= len(value) <= _CLIENT_MSG_ID_MAX or not value.isprintable():
        raise RequestRejected(
            422, "invalid_client_msg_id",
            f"client_msg_id must be a string of 1-{_CLIENT_MSG_ID_MAX} printable characters"
        )
    require_unicode("client_msg_id", value)
    return f"c-{visitor_id}-{value}"


class WebAdapter(ChannelAdapter):

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self._key = context.settings.signing_key()
        self.hub = SocketHub(context.sessions, CHANNEL, context.settings.web_account,
                             context.settings.web_max_sockets_per_visitor)

    async def stop(self) -> None:
        await self.hub.stop()

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/web/sessions", self.create_session, methods=["POST"]),
            Route("/v1/web/messages", self.post_message, methods=["POST"]),
            Route("/v1/web/conversations/{visitor_id}", self.get_conversation, methods=["GET"]),
            WebSocketRoute(WS_PATH, self.websocket),
        ]

    # --- identity ------------------------------------------------------------------------------

    def key_for(self, visitor_id: str) -> ConversationKey:
        return ConversationKey(CHANNEL, self.ctx.settings.web_account, visitor_id)

    def _visitor_from_token(self, token: str | None) -> str:
        if not token:
            raise RequestRejected(401, "missing_token", "send the visitor token as 'Authorization: Bearer <token>'")
        try:
            return visitor_token.verify(self._key, token, int(time.time()))
        except visitor_token.InvalidToken as exc:
            raise RequestRejected(401, "invalid_token", str(exc)) from None

    def _authorize(self, request: Request, visitor_id: Any) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        owner = self._visitor_from_token(token.strip() if scheme.lower() == "bearer" else None)
        if not isinstance(visitor_id, str) or not visitor_id:
            raise RequestRejected(422, "missing_visitor_id", "field 'visitor_id' is required")
        if visitor_id != owner:
            raise RequestRejected(403, "wrong_visitor", "the token was not issued for this visitor_id")
        return owner

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True  # not a browser; the token still has to be valid
        allowed = self.ctx.settings.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        return host is not None and origin.split("://", 1)[-1] == host  # same origin

    # --- HTTP ------------------------------------------------------------------------------------

    async def create_session(self, request: Request) -> Response:
        visitor_id = visitor_token.new_visitor_id()
        expires_at = int(time.time()) + self.ctx.settings.visitor_token_ttl_s
        token = visitor_token.mint(self._key, visitor_id, expires_at)
        return JSONResponse({"visitor_id": visitor_id, "token": token, "expires_at": expires_at}, status_code=201)

    async def post_message(self, request: Request) -> Response:
        settings = self.ctx.settings
        try:
            ctype = request.headers.get("content-type", "")
            if ctype and not ctype.startswith("application/json"):
                raise RequestRejected(415, "unsupported_media_type", "send the message as application/json")
            declared = request.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
                raise RequestRejected(
                    413, "body_too_large", f"request body is {declared} bytes; the limit is {settings.max_body_bytes}"
                )
            data = parse_json_object(await request.body(), settings.max_body_bytes)
            visitor_id = self._authorize(request, data.get("visitor_id"))
            text = clean_text(data.get("text"), settings.max_text_chars)
            external_id = clean_client_msg_id(data.get("client_msg_id"), visitor_id)
        except RequestRejected as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        accepted = await run_in_threadpool(self.take, Inbound(self.key_for(visitor_id), external_id, text))
        return JSONResponse(
            {"message_id": accepted.inbound_id, "duplicate": accepted.duplicate}, status_code=202
        )

    async def get_conversation(self, request: Request) -> Response:
        try:
            visitor_id = self._authorize(request, request.path_params["visitor_id"])
        except RequestRejected as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        raw_limit = request.query_params.get("limit", "50") or "50"
        if not raw_limit.isdigit():
            return JSONResponse(RequestRejected(422, "invalid_limit", "limit must be a whole number from 1 to 200"
                                                ).body(), status_code=422)
        limit = min(max(int(raw_limit), 1), 200)
        messages = await run_in_threadpool(self._history, visitor_id, limit)
        return JSONResponse({"visitor_id": visitor_id, "messages": messages})

    def _history(self, visitor_id: str, limit: int) -> list[dict[str, Any]]:
        with self.ctx.sessions() as session:
            conv_id = transcript.conversation_id(session, self.key_for(visitor_id))
            if conv_id is None:
                return []
            out: list[dict[str, Any]] = []
            for ex in transcript.exchanges(session, conv_id, limit=limit):
                out.append({"id": ex.inbound_id, "role": "user", "text": ex.text,
                            "at": ex.received_at.isoformat(), "status": ex.status})
                if ex.reply_id is not None:
                    out.append({"id": ex.reply_id, "role": "assistant", "text": ex.reply_text,
                                "at": ex.replied_at.isoformat() if ex.replied_at else None,
                                "reply_to": ex.inbound_id, "delivery": ex.delivery_status})
            return out

    # --- WebSocket ---------------------------------------------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        if not self.origin_allowed(ws.headers.get("origin"), ws.headers.get("host")):
            await ws.close(code=1008, reason="origin not allowed")
            return
        try:
            visitor_id = self._visitor_from_token(ws.query_params.get("token"))
        except RequestRejected as exc:
            await ws.close(code=1008, reason=exc.message[:120])
            return
        await ws.accept()
        await _WebSession(self, ws, self.key_for(visitor_id)).run()

    def handle_frame_sync(self, key: ConversationKey, frame: dict[str, Any]) -> dict[str, Any] | None:
        """Apply one client frame (in a worker thread); return the frame to answer with, if any."""
        kind = frame.get("type")
        if kind == "message":
            text = clean_text(frame.get("text"), self.ctx.settings.max_text_chars)
            external_id = clean_client_msg_id(frame.get("client_msg_id"), key.peer)
            accepted = self.take(Inbound(key, external_id, text))
            return {"type": "accepted", "message_id": accepted.inbound_id,
                    "client_msg_id": frame.get("client_msg_id"), "duplicate": accepted.duplicate}
        if kind == "ack":
            reply_id = frame.get("reply_id")
            if not isinstance(reply_id, int):
                raise RequestRejected(422, "invalid_reply_id", "ack needs an integer 'reply_id'")
            with transaction(self.ctx.sessions) as session:
                transcript.mark_delivered(session, key, reply_id)
            return None
        raise RequestRejected(400, "unknown_frame_type", f"unknown frame type {kind!r}; use message, ack or ping")


class _WebSession:
    """One visitor's socket: client frames in; live tokens, replies (in message order) and status out."""

    def __init__(self, adapter: WebAdapter, ws: WebSocket, key: ConversationKey) -> None:
        self.adapter, self.ws, self.key = adapter, ws, key
        self.peer = key.peer
        self._hub = adapter.hub
        self._send_lock = asyncio.Lock()
        self._reply_lock = asyncio.Lock()  # one reply sender at a time: the order decided is the order sent
        self._pushed: dict[int, float] = {}  # reply_id → when this socket last sent it
        self._finished: set[int] = set()  # message ids whose final reply this socket has sent
        # replies created from shortly before the socket opened are shown even when another tab acked them
        self._since = utcnow() - timedelta(seconds=SHOW_ACKED_SINCE_S)

    async def send(self, frame: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(frame, ensure_ascii=False))

    async def run(self) -> None:
        listener = self.adapter.ctx.listener
        topic = self.key.topic()
        events = listener.subscribe(topic)  # subscribe before reading the database: no gap
        self._hub.register(self)
        tasks: list[asyncio.Task[None]] = []
        try:
            if self._hub.degraded:
                await self.send_status("degraded")
            await self._show()  # before any client frame is read: a pong means the socket is fully open
            tasks += [asyncio.create_task(self._read()), asyncio.create_task(self._forward(events))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away while we were sending
        finally:
            self._hub.unregister(self)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                    await task
            listener.unsubscribe(topic, events)

    # --- what the hub calls ------------------------------------------------------------------------------------
    async def offer(self, rows: Sequence[ReplyRow]) -> None:
        """The shared poll's unconfirmed replies of this conversation: send the new and the overdue, in order."""
        async with self._reply_lock:
            await self._send_rows(rows)

    async def send_status(self, state: str) -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await self.send({"type": "status", "state": state})

    async def replace(self) -> None:
        """Closed because the visitor opened more sockets than the cap (the newest are kept)."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await self.ws.close(code=REPLACED, reason=REPLACED_REASON)

    # --- client frames -------------------------------------------------------------------------------------------
    async def _read(self) -> None:
        while True:
            try:
                raw = await self.ws.receive_text()
            except (WebSocketDisconnect, RuntimeError):
                return
            except KeyError:  # a binary frame
                await self.send(_error_frame("binary_frame", "send JSON text frames"))
                continue
            try:
                frame = json.loads(raw)
                if not isinstance(frame, dict):
                    raise ValueError("not an object")
            except (ValueError, RecursionError):  # RecursionError: nested too deeply
                await self.send(_error_frame("malformed_frame", 'frames must be JSON objects with a "type"'))
                continue
            if frame.get("type") == "ping":
                await self.send({"type": "pong"})
                continue
            await self._apply(frame)

    async def _apply(self, frame: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            answer = await run_in_threadpool(self.adapter.handle_frame_sync, self.key, frame)
        except RequestRejected as exc:
            await self.send(_error_frame(exc.code, exc.message))
            return
        except Exception as exc:  # database trouble: nothing was recorded; the socket stays open
            log.error("web frame failed: %s", type(exc).__name__)
            await self._hub.report(False, exc)
            if frame.get("type") == "ack":  # the reply stays unconfirmed: it is sent again, and acked again
                await self.send(_error_frame("ack_not_recorded", "the acknowledgement was not recorded (service "
                                                                 "degraded); the reply will be sent again"))
            else:
                await self.send(_error_frame("unavailable", "the message was not accepted (service degraded); "
                                                            "send it again"))
            return
        if answer is not None:
            await self.send(answer)
            if answer["type"] == "accepted":  # the socket's acknowledgement, timed like an HTTP route's
                metrics.acked(CHANNEL, WS_PATH, "WS", time.perf_counter() - started)

    # --- replies and tokens --------------------------------------------------------------------------------------
    async def _forward(self, events: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            event = await events.get()
            kind = event.get("type")
            if kind == "token" and event.get("message_id") in self._finished:
                continue  # the final reply already went out (the resend path can overtake the last tokens)
            if kind == "reply":
                await self._show(event)
            else:
                await self.send(event)

    async def _show(self, event: dict[str, Any] | None = None) -> None:
        """Send this conversation's replies not yet sent (or overdue), in message order.

        A live reply is sent after every earlier stored reply of the conversation, read from the database now:
        replies are stored in conversation order, but their live events can arrive in any order.
        """
        async with self._reply_lock:
            rows = await self._hub.replies(self.peer, self._since)
            if rows is None:  # database down: the live event is all we have
                rows = []
            if event is not None and all(r.reply_id != event["reply_id"] for r in rows):
                rows.append(ReplyRow(int(event["reply_id"]), int(event["message_id"]), str(event["text"]), False))
                rows.sort(key=lambda r: r.message_id)
            await self._send_rows(rows)

    async def _send_rows(self, rows: Sequence[ReplyRow]) -> None:
        now = time.monotonic()
        for row in rows:
            last = self._pushed.get(row.reply_id)
            if last is None or (not row.confirmed and now - last >= RESEND_INTERVAL_S):
                self._pushed[row.reply_id] = now
                self._finished.add(row.message_id)
                await self.send({"type": "reply", "reply_id": row.reply_id, "message_id": row.message_id,
                                 "text": row.text})


def _error_frame(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


class WebOutbound(Outbound):
    """Worker side: tokens and the final reply go to the gateways through the bus."""

    def stream(self, key: ConversationKey, inbound_id: int, piece: str) -> None:
        self.deps.bus.publish(key.topic(), {"type": "token", "message_id": inbound_id, "text": piece})

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        self.deps.bus.publish(
            reply.key.topic(),
            {"type": "reply", "reply_id": reply.reply_id, "message_id": reply.inbound_id, "text": reply.text,
             "source": str(reply.source)},
        )


# A person takes a web conversation only through the agent console (channels.desk_handoff); without one, 转人工
# gets an honest answer (the base hand-off port).
descriptor = Channel(name=CHANNEL, adapter=WebAdapter, outbound=WebOutbound, streams=True)

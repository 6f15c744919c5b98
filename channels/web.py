"""Web chat channel: HTTP API, a WebSocket that streams replies token by token, and its outbound.

Routes (all JSON; errors are ``{"error": {"code", "message"}}``):

- ``POST /v1/web/sessions`` → 201 ``{visitor_id, token, expires_at}``: a new anonymous visitor.
- ``POST /v1/web/messages`` ``{visitor_id, text, client_msg_id?}`` with ``Authorization: Bearer
  <token>`` → 202 ``{message_id, duplicate}``. 400 malformed JSON, 401/403 bad token, 413 text or
  body too long, 415 not JSON, 422 missing/empty fields, 429 ``rate_limited`` (with ``Retry-After``). A rejected
  request leaves no row.
- ``GET /v1/web/conversations/{visitor_id}`` with the token → the history (a reply cut short carries
  ``truncated: true``; each reply has its ``source``, and an agent's message, which answers no one message
  (``reply_to`` null), its ``agent_name``; agents' messages and the score request are placed by time).
- ``POST /v1/web/csat`` ``{score: 1-5, comment?}`` with the token → 201 ``{csat_id, thanks}``: the visitor's
  satisfaction score for the conversation's current round (models.csat; rating again replaces it). 422 a score
  outside 1-5 or a comment over 500 characters, 404 no conversation yet.
- ``GET /v1/web/config`` → ``{welcome_message}``: what the chat page shows a visitor first (never stored, never
  sent to the model; ``KEFU_WEB_WELCOME_MESSAGE``, "" shows none).
- ``GET /v1/web/widget.js``: the embeddable widget (``channels/static/widget.js``, docs/channels.md).
- ``WS /v1/web/ws?token=…`` (Origin checked against the allowlist). Client frames: ``message``
  ``{text, client_msg_id?}``, ``ack`` ``{reply_id}``, ``ping``, ``typing`` (relayed to the console as
  ``{"type": "typing", "conversation_id"}`` on the bus topic ``desk``, only while a person holds the conversation,
  at most once per 2 s per conversation). Server frames: ``accepted``, ``token`` ``{message_id, text}``, ``reply``
  ``{reply_id, message_id, text, truncated, source, agent_name?}`` (``source`` ``agent`` with the agent's display
  name for a person's message, ``csat`` for the score request; ``message_id`` null for both), ``error``
  ``{code, message, client_msg_id?}`` (the connection stays open; ``client_msg_id`` names the refused ``message``
  frame, whose text the page gives back to the visitor; code ``rate_limited`` adds ``retry_after_s``), ``pong``,
  ``status`` ``{state: "degraded" | "ok"}``.

``truncated`` is true when the reply is the model's answer and its generation stopped before it was done (at
``KEFU_MAX_TOKENS`` or the deadline: ``finish_reason`` of its ``generation_finished`` audit row); the page marks it.

CORS: the HTTP routes above answer cross-origin requests (and preflights) from the origins in
``KEFU_WEB_CORS_ORIGINS`` only (default none: no CORS headers at all), through Starlette's ``CORSMiddleware`` around
these routes alone. The WebSocket keeps its own Origin check (``KEFU_ALLOWED_ORIGINS``).

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

Admission control (:mod:`channels.admission`, docs/admission.md): a new session counts against its client address's
limit (``KEFU_RATE_LIMIT_IP``), a message against its visitor's (``KEFU_RATE_LIMIT_VISITOR``) and then its address's;
over one, the request is refused with 429 (or the ``rate_limited`` error frame) before anything is stored. A message
for the model while the model's estimated wait is over ``KEFU_BACKPRESSURE_WAIT_S`` is stored and answered at once
with ``backpressure_reply`` (:meth:`~channels.base.ChannelAdapter.take`).

Every visitor message goes through the same dialogue decision as every channel
(:meth:`~channels.base.ChannelAdapter.take`): an FAQ hit is answered at once without the model, and
a request for a person goes to the agent console's waiting queue while the desk is open (channels.desk_handoff),
else gets an honest answer (``handoff_unavailable_reply`` or ``desk_after_hours_reply``); those replies, and the
agent's messages, reach the socket like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from channels import visitor_token
from channels.admission import IP, VISITOR, RateLimited
from channels.base import Channel, ChannelAdapter, DeliveryProgress, Outbound, RequestRejected
from channels.http import clean_text, client_ip, parse_json_object, require_unicode
from channels.web_sockets import REPLACED, REPLACED_REASON, RESEND_INTERVAL_S, SocketHub
from models import csat, desk, transcript
from models.envelope import ConversationKey, Inbound, Reply, utcnow
from models.infra import metrics
from models.infra.db import transaction
from models.settings import Section, comma_list
from models.states import WITH_PERSON, ReplySource
from models.tables import ConversationRecord
from models.transcript import ReplyRow

if TYPE_CHECKING:
    from channels.base import ChannelContext
    from channels.ingress import Accepted

log = logging.getLogger(__name__)

CHANNEL = "web"
WS_PATH = "/v1/web/ws"  # the chat socket; its message frames' acknowledgements are timed as method "WS"
SHOW_ACKED_SINCE_S = 5.0
_CLIENT_MSG_ID_MAX = 64
DEFAULT_WELCOME = "您好，我是智能客服，请问有什么可以帮您？"
# the WebSocket's error frame for a refused message (the page gives the visitor their text back)
RATE_LIMITED_FRAME = "您发送消息太快了，请{seconds}秒后再发送这条消息。"
TYPING_INTERVAL_S = 2.0  # at most one typing event per conversation this often (per gateway process)
TYPING_REMEMBERED = 10_000  # conversations whose last typing event is remembered before stale ones are dropped


class WebSettings(Section):
    # What the chat page shows a visitor who opens it, as the service's first bubble; never stored, never sent to
    # the model (KEFU_WEB_WELCOME_MESSAGE; "" shows none)
    web_welcome_message: str = DEFAULT_WELCOME
    # Origins (scheme://host[:port]) whose pages may call the web chat's HTTP API from their own scripts (CORS);
    # a comma-separated list or JSON (KEFU_WEB_CORS_ORIGINS). Default none: no CORS headers. The chat page and
    # the widget's iframe are served by the gateway itself and need none.
    web_cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("web_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        return comma_list(value)

    @field_validator("web_cors_origins")
    @classmethod
    def _origins_have_schemes(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and ("://" not in origin or origin.endswith("/")):
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], e.g. https://shop.example.com")
        return value


def cut_replies(sessions: sessionmaker[Session], message_ids: Sequence[int]) -> set[int]:
    """The messages among ``message_ids`` whose reply is the model's answer cut short (:func:`models.transcript.cut`)."""
    if not message_ids:
        return set()
    with sessions() as session:
        return transcript.cut(session, message_ids)


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
    peer_scope = None  # a visitor's messages are limited before they are accepted (accept_message), with 429

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self._key = context.settings.signing_key()
        self.web = context.settings.section(WebSettings)
        self._widget = resources.files("channels").joinpath("static/widget.js").read_text(encoding="utf-8")
        self.hub = SocketHub(context.sessions, CHANNEL, context.settings.web_account,
                             context.settings.web_max_sockets_per_visitor)
        self._typing_at: dict[str, float] = {}  # peer → when its last typing event went out

    async def stop(self) -> None:
        await self.hub.stop()

    def routes(self) -> list[BaseRoute]:
        return [
            self._api("/v1/web/sessions", self.create_session, "POST"),
            self._api("/v1/web/messages", self.post_message, "POST"),
            self._api("/v1/web/conversations/{visitor_id}", self.get_conversation, "GET"),
            self._api("/v1/web/config", self.get_config, "GET"),
            self._api("/v1/web/csat", self.post_csat, "POST"),
            Route("/v1/web/widget.js", self.get_widget, methods=["GET"]),
            WebSocketRoute(WS_PATH, self.websocket),
        ]

    def _api(self, path: str, endpoint: Any, method: str) -> Route:
        """One HTTP route of the API, answering CORS (preflight included) for ``KEFU_WEB_CORS_ORIGINS`` only."""
        origins = self.web.web_cors_origins
        if not origins:
            return Route(path, endpoint, methods=[method])
        route = Route(path, endpoint, methods=[method, "OPTIONS"])  # OPTIONS: the preflight reaches the middleware
        route.app = CORSMiddleware(route.app, allow_origins=origins, allow_methods=[method],
                                   allow_headers=["Authorization", "Content-Type"], max_age=600)
        return route

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
        refusal = await run_in_threadpool(self.ctx.admission.limit, IP, client_ip(request) or "unknown",
                                         channel=CHANNEL)
        if refusal is not None:
            exc = RateLimited(refusal, f"too many new sessions from this address ({refusal.limit}); "
                                       f"retry after {refusal.retry_after_s} s")
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())
        visitor_id = visitor_token.new_visitor_id()
        expires_at = int(time.time()) + self.ctx.settings.visitor_token_ttl_s
        token = visitor_token.mint(self._key, visitor_id, expires_at)
        return JSONResponse({"visitor_id": visitor_id, "token": token, "expires_at": expires_at}, status_code=201)

    async def get_config(self, request: Request) -> Response:
        return JSONResponse({"welcome_message": self.web.web_welcome_message})

    async def get_widget(self, request: Request) -> Response:
        return Response(self._widget, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=300"})

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
            accepted = await run_in_threadpool(self.accept_message, Inbound(self.key_for(visitor_id), external_id, text),
                                               client_ip(request))
        except RateLimited as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers())
        except RequestRejected as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
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
            exchanges = transcript.exchanges(session, conv_id, limit=limit)
            # replies to no one message (an agent's, the score request) since the oldest message shown
            since = exchanges[0].received_at if len(exchanges) == limit else None
            loose = transcript.loose_replies(session, conv_id, since=since, limit=limit)
        cut = cut_replies(self.ctx.sessions, [ex.inbound_id for ex in exchanges if ex.reply_id is not None])
        out: list[dict[str, Any]] = []
        waiting = list(loose)

        def loose_until(at: datetime | None) -> None:
            while waiting and (at is None or waiting[0].created_at < at):
                r = waiting.pop(0)
                out.append({"id": r.reply_id, "role": "assistant", "text": r.text, "at": r.created_at.isoformat(),
                            "reply_to": None, "delivery": r.delivery_status, "truncated": False,
                            "source": r.source, "agent_name": r.agent_name})

        for ex in exchanges:
            loose_until(ex.received_at)
            out.append({"id": ex.inbound_id, "role": "user", "text": ex.text,
                        "at": ex.received_at.isoformat(), "status": ex.status})
            if ex.reply_id is not None:
                out.append({"id": ex.reply_id, "role": "assistant", "text": ex.reply_text,
                            "at": ex.replied_at.isoformat() if ex.replied_at else None,
                            "reply_to": ex.inbound_id, "delivery": ex.delivery_status,
                            "truncated": ex.inbound_id in cut, "source": ex.reply_source, "agent_name": None})
        loose_until(None)
        return out

    async def post_csat(self, request: Request) -> Response:
        """The visitor's satisfaction score for the conversation's current round (models.csat.record)."""
        settings = self.ctx.settings
        try:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            visitor_id = self._visitor_from_token(token.strip() if scheme.lower() == "bearer" else None)
            data = parse_json_object(await request.body(), settings.max_body_bytes)
            if data.get("visitor_id", visitor_id) != visitor_id:
                raise RequestRejected(403, "wrong_visitor", "the token was not issued for this visitor_id")
            score = data.get("score")
            if isinstance(score, bool) or not isinstance(score, int) or score not in csat.SCORES:
                raise RequestRejected(422, "invalid_score", "score must be an integer from 1 to 5")
            comment = data.get("comment", "")
            if not isinstance(comment, str) or len(comment) > csat.MAX_COMMENT:
                raise RequestRejected(422, "invalid_comment",
                                      f"comment must be a string of at most {csat.MAX_COMMENT} characters")
            require_unicode("comment", comment)
        except RequestRejected as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        found = await run_in_threadpool(self._record_csat, visitor_id, score, comment)
        if found is None:
            return JSONResponse(RequestRejected(404, "no_conversation", "this visitor has no conversation yet").body(),
                                status_code=404)
        return JSONResponse({"csat_id": found, "thanks": settings.csat_thanks_reply}, status_code=201)

    def _record_csat(self, visitor_id: str, score: int, comment: str) -> int | None:
        with transaction(self.ctx.sessions) as session:
            conv_id = transcript.conversation_id(session, self.key_for(visitor_id))
            if conv_id is None:
                return None
            return csat.record(session, conv_id, score, CHANNEL, comment)

    def typing(self, key: ConversationKey) -> bool:
        """Tell the console the visitor is typing (bus topic ``desk``), only while a person holds the conversation;
        whether an event went out. Throttled by the caller."""
        bus = self.ctx.bus
        if bus is None:
            return False
        with self.ctx.sessions() as session:
            row = session.execute(select(ConversationRecord.id, ConversationRecord.handler).where(
                ConversationRecord.channel == key.channel, ConversationRecord.account == key.account,
                ConversationRecord.peer == key.peer)).first()
        if row is None or row.handler not in WITH_PERSON:
            return False
        bus.publish(desk.TOPIC, desk.event("typing", int(row.id)))
        return True

    def typing_due(self, peer: str, now: float | None = None) -> bool:
        """At most one typing event per :data:`TYPING_INTERVAL_S` per conversation (this gateway process);
        ``now``: monotonic seconds (a test's clock)."""
        now = time.monotonic() if now is None else now
        last = self._typing_at.get(peer)
        if last is not None and now - last < TYPING_INTERVAL_S:
            return False
        if len(self._typing_at) >= TYPING_REMEMBERED:  # forget the stale ones (bounded memory)
            self._typing_at = {p: t for p, t in self._typing_at.items() if now - t < TYPING_INTERVAL_S}
        self._typing_at[peer] = now
        return True

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

    def accept_message(self, inbound: Inbound, ip: str | None) -> Accepted:
        """:meth:`take` once the visitor's and then the address's rate limits (channels.admission) allow the message;
        RateLimited (429) otherwise, and nothing is stored: the visitor keeps their text (the page gives it back)."""
        admission = self.ctx.admission
        refusal = admission.limit(VISITOR, inbound.key.peer, channel=CHANNEL)
        what = "messages from this visitor"
        if refusal is None and ip is not None:
            refusal = admission.limit(IP, ip, channel=CHANNEL)
            what = "requests from this address"
        if refusal is not None:
            raise RateLimited(refusal, f"too many {what} ({refusal.limit}); retry after {refusal.retry_after_s} s")
        return self.take(inbound)

    def handle_frame_sync(self, key: ConversationKey, frame: dict[str, Any], ip: str | None = None
                          ) -> dict[str, Any] | None:
        """Apply one client frame (in a worker thread); return the frame to answer with, if any. ``ip``: the
        socket's client address (its messages count against it)."""
        kind = frame.get("type")
        if kind == "message":
            text = clean_text(frame.get("text"), self.ctx.settings.max_text_chars)
            external_id = clean_client_msg_id(frame.get("client_msg_id"), key.peer)
            accepted = self.accept_message(Inbound(key, external_id, text), ip)
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
            if frame.get("type") == "typing":
                await self._typing()
                continue
            await self._apply(frame)

    async def _apply(self, frame: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            answer = await run_in_threadpool(self.adapter.handle_frame_sync, self.key, frame,
                                             self.ws.client.host if self.ws.client else None)
        except RateLimited as exc:  # a polite word for the visitor; the page gives their text back
            error = _error_frame(exc.code, RATE_LIMITED_FRAME.format(seconds=exc.retry_after_s), frame)
            await self.send({**error, "retry_after_s": exc.retry_after_s})
            return
        except RequestRejected as exc:
            await self.send(_error_frame(exc.code, exc.message, frame))
            return
        except Exception as exc:  # database trouble: nothing was recorded; the socket stays open
            log.error("web frame failed: %s", type(exc).__name__)
            await self._hub.report(False, exc)
            if frame.get("type") == "ack":  # the reply stays unconfirmed: it is sent again, and acked again
                await self.send(_error_frame("ack_not_recorded", "the acknowledgement was not recorded (service "
                                                                 "degraded); the reply will be sent again"))
            else:
                await self.send(_error_frame("unavailable", "the message was not accepted (service degraded); "
                                                            "send it again", frame))
            return
        if answer is not None:
            await self.send(answer)
            if answer["type"] == "accepted":  # the socket's acknowledgement, timed like an HTTP route's
                metrics.acked(CHANNEL, WS_PATH, "WS", time.perf_counter() - started)

    async def _typing(self) -> None:
        if not self.adapter.typing_due(self.peer):
            return
        try:
            await run_in_threadpool(self.adapter.typing, self.key)
        except Exception as exc:  # best effort: the agent just does not see the visitor typing
            log.warning("web: typing not relayed (%s)", type(exc).__name__)

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
                message_id = event.get("message_id")  # None for an agent's message
                rows.append(ReplyRow(int(event["reply_id"]), None if message_id is None else int(message_id),
                                     str(event["text"]), False, str(event.get("source") or ReplySource.MODEL),
                                     event.get("agent_name")))
                rows.sort(key=lambda r: r.reply_id)  # stored in conversation order
            await self._send_rows(rows)

    async def _send_rows(self, rows: Sequence[ReplyRow]) -> None:
        now = time.monotonic()
        due = [row for row in rows if (last := self._pushed.get(row.reply_id)) is None
               or (not row.confirmed and now - last >= RESEND_INTERVAL_S)]
        cut = await self._cut([row.message_id for row in due if row.message_id is not None])
        for row in due:
            self._pushed[row.reply_id] = now
            if row.message_id is not None:
                self._finished.add(row.message_id)
            frame = {"type": "reply", "reply_id": row.reply_id, "message_id": row.message_id, "text": row.text,
                     "truncated": row.message_id in cut, "source": row.source}
            if row.agent_name is not None:
                frame["agent_name"] = row.agent_name
            await self.send(frame)

    async def _cut(self, message_ids: list[int]) -> set[int]:
        """Which of these replies were cut short; none when the database cannot say (the reply goes out anyway)."""
        if not message_ids:
            return set()
        try:
            return await run_in_threadpool(cut_replies, self.adapter.ctx.sessions, message_ids)
        except Exception as exc:
            log.warning("web: could not read whether replies were cut (%s)", type(exc).__name__)
            return set()


def _error_frame(code: str, message: str, frame: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ``error`` frame; one that refuses a ``message`` frame names it by its ``client_msg_id``."""
    error: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if frame is not None and frame.get("type") == "message" and isinstance(frame.get("client_msg_id"), str):
        error["client_msg_id"] = frame["client_msg_id"]
    return error


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
descriptor = Channel(name=CHANNEL, adapter=WebAdapter, outbound=WebOutbound, streams=True,
                     section=WebSettings)

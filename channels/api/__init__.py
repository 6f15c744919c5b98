"""The API channel: Kefu as a drop-in for OpenAI's and Ollama's chat APIs, for platforms already pointed at them.

Routes (served by the gateway; each request is one message of the channel ``api``, account = the API key's name):

- ``POST /v1/chat/completions`` (``stream`` true: server-sent ``chat.completion.chunk`` events, ``data: [DONE]``)
  and ``GET /v1/models`` — :mod:`channels.api.openai_wire`.
- ``POST /api/chat``, ``POST /api/generate`` (``stream`` defaults to true: NDJSON), ``GET /api/tags``,
  ``GET /api/version`` — :mod:`channels.api.ollama_wire`.

Every request needs ``Authorization: Bearer <key>`` (``kefu apikey add NAME``; :mod:`models.api_keys`), except
Ollama's routes when ``KEFU_API_OLLAMA_KEYLESS_AS`` names a key whose requests they are (Ollama clients send no
key; keep such a gateway behind the firewall). 401 for a missing, unknown or revoked key.
Admission (:mod:`channels.admission`): each key's requests are rate-limited (``KEFU_RATE_LIMIT_API_KEY``) and new
work is refused while the model's estimated wait is over ``KEFU_BACKPRESSURE_WAIT_S``: 429 with ``Retry-After``.

A request goes the way every channel's message goes (:mod:`channels.api.exchange`): the dialogue decision (FAQ,
rules, a person where one can take over), the queue, the batching engine, the audit. The client keeps the
conversation: the messages before the last one are stored with the request and are the model's history (after
the operator's system prompt; the client's system messages follow it). The conversation is the request's
``user`` (OpenAI) or, without one, its opening message. Errors are each API's own shape, with the status: 400
malformed, 401 key, 413 too long, 415 not JSON, 429 limited, 503 unavailable, 504 no reply in time
(``KEFU_API_REPLY_TIMEOUT_S``; the reply is still stored when it comes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from pydantic import PositiveInt
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from channels.admission import API_KEY, BACKPRESSURE, IP, RateLimited
from channels.api import ollama_wire, openai_wire
from channels.api.exchange import CHANNEL, Answer, Exchange, ReplyTimeout, Ticket
from channels.api.request import ChatRequest
from channels.base import Channel, ChannelAdapter, DeliveryProgress, Outbound
from channels.errors import RequestRejected
from channels.http import client_ip, parse_json_object, read_limited
from models import api_keys, privacy
from models.envelope import ConversationKey, Reply, Turn
from models.infra import heartbeat
from models.settings import Section
from models.tables import ApiRequestRecord

if TYPE_CHECKING:
    from channels.base import ChannelContext

log = logging.getLogger(__name__)

ALIAS = "kefu"  # always listed: "whatever model Kefu serves" (the gray release picks the one that answers)
Render = Callable[[RequestRejected], Response]


class ApiSettings(Section):
    # How long an API request waits for its reply before 504 (the reply is still stored and audited)
    api_reply_timeout_s: PositiveInt = 120
    # The largest API request body (a client sends the whole conversation each time)
    api_max_body_bytes: PositiveInt = 1024 * 1024
    # The longest last (user) message an API request may carry, in characters (413 above)
    api_max_text_chars: PositiveInt = 8000
    # Ollama clients send no key: the name of the key (kefu apikey add) that keyless requests to /api/* count as;
    # "" (default) requires a key there too. Only behind a firewall.
    api_ollama_keyless_as: str = ""


def _openai_error(exc: RequestRejected) -> Response:
    return _with_retry(JSONResponse(openai_wire.error(exc.status, exc.code, exc.message), status_code=exc.status), exc)


def _ollama_error(exc: RequestRejected) -> Response:
    return _with_retry(JSONResponse(ollama_wire.error(exc.message), status_code=exc.status), exc)


def _with_retry(response: Response, exc: RequestRejected) -> Response:
    if isinstance(exc, RateLimited):
        response.headers.update(exc.headers())
    return response


class ApiAdapter(ChannelAdapter):
    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self.api = context.settings.section(ApiSettings)
        self.keys = api_keys.KeyCheck(context.sessions)
        self.exchange = Exchange(context.sessions, context.listener, self.take,
                                 lambda text: privacy.stored_text(context.settings, text)[0],
                                 float(self.api.api_reply_timeout_s))

    def admit(self, key: ConversationKey) -> None:
        """Nothing more at acceptance: the request passed :meth:`_admit` (its 429) just before."""
        return None

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/api/chat", self.ollama_chat, methods=["POST"]),
            Route("/api/generate", self.ollama_generate, methods=["POST"]),
            Route("/api/tags", self.ollama_tags, methods=["GET"]),
            Route("/api/version", self.ollama_version, methods=["GET"]),
        ]

    # --- what every request goes through -------------------------------------------------------------------

    async def _key(self, request: Request, *, keyless_as: str = "") -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header and keyless_as:
            return keyless_as
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestRejected(401, "invalid_api_key", "send a Kefu API key as 'Authorization: Bearer <key>' "
                                  "(an operator makes one with: kefu apikey add NAME)")
        name = await run_in_threadpool(self.keys.name_of, token.strip())
        if name is None:
            raise RequestRejected(401, "invalid_api_key", "the API key is unknown or revoked")
        return name

    def _admit(self, name: str, ip: str) -> None:
        """The client's IP limit, the key's, then backpressure (429 with Retry-After)."""
        admission = self.ctx.admission
        refusal = (admission.limit(IP, ip, channel=CHANNEL) or admission.limit(API_KEY, name, channel=CHANNEL)
                   or admission.backpressure(channel=CHANNEL))
        if refusal is not None:
            what = {BACKPRESSURE: "the model's queue is long", IP: f"this address's rate limit ({refusal.limit}) "
                    "is reached"}.get(refusal.scope, f"this key's rate limit ({refusal.limit}) is reached")
            raise RateLimited(refusal, f"{what}; retry after {refusal.retry_after_s} s")

    async def _body(self, request: Request) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "")
        if ctype and not ctype.startswith("application/json"):
            raise RequestRejected(415, "unsupported_media_type", "send the request as application/json")
        return parse_json_object(await read_limited(request, self.api.api_max_body_bytes),
                                 self.api.api_max_body_bytes)

    async def _models(self) -> list[str]:
        try:
            beats = await run_in_threadpool(heartbeat.alive, self.ctx.kv)
        except Exception:
            beats = []
        return [ALIAS, *sorted({b.model for b in beats if b.model and b.model != ALIAS})]

    # --- OpenAI --------------------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        try:
            name = await self._key(request)
            chat, include_usage = openai_wire.parse(await self._body(request), self.api.api_max_text_chars)
            await run_in_threadpool(self._admit, name, client_ip(request) or "unknown")
            ticket = await self.exchange.open(name, chat)
        except RequestRejected as exc:
            return _openai_error(exc)
        if chat.stream:
            return StreamingResponse(self._openai_events(ticket, chat, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            answer = await _whole(self.exchange.answer(ticket))
        except ReplyTimeout as exc:
            return _openai_error(RequestRejected(504, "timeout", f"{exc}; the reply will still be stored"))
        await self.exchange.delivered(ticket, answer.reply_id)
        return JSONResponse(openai_wire.completion(
            "chatcmpl-" + ticket.external_id, int(time.time()), answer.model or chat.model, answer.text,
            answer.finish_reason, answer.prompt_tokens, answer.completion_tokens))

    async def _openai_events(self, ticket: Ticket, chat: ChatRequest, include_usage: bool) -> AsyncIterator[bytes]:
        id_, created = "chatcmpl-" + ticket.external_id, int(time.time())
        yield openai_wire.event(openai_wire.chunk(id_, created, chat.model, {"role": "assistant", "content": ""},
                                                  with_usage=include_usage))
        try:
            async for item in self.exchange.answer(ticket):
                if isinstance(item, Answer):
                    model = item.model or chat.model
                    yield openai_wire.event(openai_wire.chunk(id_, created, model, {}, item.finish_reason,
                                                              with_usage=include_usage))
                    if include_usage:
                        yield openai_wire.event(openai_wire.usage_chunk(id_, created, model, item.prompt_tokens,
                                                                        item.completion_tokens))
                    yield openai_wire.event("[DONE]")
                    await self.exchange.delivered(ticket, item.reply_id)
                    return
                yield openai_wire.event(openai_wire.chunk(id_, created, chat.model, {"content": item},
                                                          with_usage=include_usage))
        except ReplyTimeout as exc:
            yield openai_wire.event(openai_wire.error(504, "timeout", f"{exc}; the reply will still be stored"))

    async def list_models(self, request: Request) -> Response:
        try:
            await self._key(request)
        except RequestRejected as exc:
            return _openai_error(exc)
        return JSONResponse(openai_wire.models(await self._models(), int(time.time())))

    # --- Ollama --------------------------------------------------------------------------------------------

    async def ollama_chat(self, request: Request) -> Response:
        return await self._ollama(request, chat=True)

    async def ollama_generate(self, request: Request) -> Response:
        return await self._ollama(request, chat=False)

    async def _ollama(self, request: Request, *, chat: bool) -> Response:
        started = time.monotonic_ns()
        try:
            name = await self._key(request, keyless_as=self.api.api_ollama_keyless_as)
            data = await self._body(request)
            limit = self.api.api_max_text_chars
            parsed = ollama_wire.parse_chat(data, limit) if chat else ollama_wire.parse_generate(data, limit)
            if parsed is None:  # an empty prompt: Ollama's "load the model"
                return JSONResponse(ollama_wire.final(str(data.get("model")), "", chat=False, done_reason="load",
                                                      total_ns=0, prompt_tokens=0, completion_tokens=0))
            await run_in_threadpool(self._admit, name, client_ip(request) or "unknown")
            ticket = await self.exchange.open(name, parsed)
        except RequestRejected as exc:
            return _ollama_error(exc)
        if parsed.stream:
            return StreamingResponse(self._ollama_lines(ticket, parsed, chat, started),
                                     media_type="application/x-ndjson")
        try:
            answer = await _whole(self.exchange.answer(ticket))
        except ReplyTimeout as exc:
            return _ollama_error(RequestRejected(504, "timeout", f"{exc}; the reply will still be stored"))
        await self.exchange.delivered(ticket, answer.reply_id)
        return JSONResponse(_ollama_final(parsed, answer, answer.text, chat, started))

    async def _ollama_lines(self, ticket: Ticket, parsed: ChatRequest, chat: bool, started: int
                            ) -> AsyncIterator[bytes]:
        try:
            async for item in self.exchange.answer(ticket):
                if isinstance(item, Answer):
                    yield ollama_wire.line(_ollama_final(parsed, item, "", chat, started))
                    await self.exchange.delivered(ticket, item.reply_id)
                    return
                yield ollama_wire.line(ollama_wire.piece(parsed.model, item, chat=chat))
        except ReplyTimeout as exc:
            yield ollama_wire.line(ollama_wire.error(f"{exc}; the reply will still be stored"))

    async def ollama_tags(self, request: Request) -> Response:
        try:
            await self._key(request, keyless_as=self.api.api_ollama_keyless_as)
        except RequestRejected as exc:
            return _ollama_error(exc)
        return JSONResponse(ollama_wire.tags(await self._models()))

    async def ollama_version(self, request: Request) -> Response:
        return JSONResponse({"version": ollama_wire.VERSION})


def _ollama_final(parsed: ChatRequest, answer: Answer, text: str, chat: bool, started: int) -> dict[str, Any]:
    return ollama_wire.final(parsed.model, text, chat=chat, done_reason="length" if answer.finish_reason == "length"
                             else "stop", total_ns=time.monotonic_ns() - started, prompt_tokens=answer.prompt_tokens,
                             completion_tokens=answer.completion_tokens)


async def _whole(answer: AsyncIterator[str | Answer]) -> Answer:
    async for item in answer:
        if isinstance(item, Answer):
            return item
    raise ReplyTimeout("the answer ended without a reply")


class ApiOutbound(Outbound):
    """Worker side: tokens and the stored reply go to the gateway that holds the request, through the bus; the
    request's own messages are the conversation the model reads."""

    def stream(self, key: ConversationKey, inbound_id: int, piece: str) -> None:
        self.deps.bus.publish(key.topic(), {"type": "token", "message_id": inbound_id, "text": piece})

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        self.deps.bus.publish(reply.key.topic(), {"type": "reply", "reply_id": reply.reply_id,
                                                  "message_id": reply.inbound_id})

    def client_history(self, account: str, external_id: str) -> list[Turn] | None:
        with self.deps.sessions() as session:
            messages = session.scalar(select(ApiRequestRecord.messages).where(
                ApiRequestRecord.account == account, ApiRequestRecord.external_id == external_id))
        if messages is None:
            return None
        return [Turn(role, text) for role, text in messages]


descriptor = Channel(name=CHANNEL, adapter=ApiAdapter, outbound=ApiOutbound, section=ApiSettings, streams=True)

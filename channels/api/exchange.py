"""One API request, from the client's messages to the stored reply: the API channel's round trip.

:meth:`Exchange.open` stores the request's conversation (``api_request``) and then the message, through the
same dialogue decision as every channel (``ChannelAdapter.take``: an FAQ hit or a rule answers at once, the rest
goes to the model's queue); :meth:`Exchange.answer` follows the conversation's live events (the worker's
tokens, then the delivered reply) and yields the text as it comes, then one :class:`Answer` read from the reply row.

Guarantees:
- Subscribed before the message is accepted: no token or reply event can come before we listen.
- A reply is found even when its live event was missed (a bus reconnect): the reply row is read every
  :data:`CHECK_EVERY_S` of silence. The answer's text is the stored reply's; streamed text that the stored reply
  extends (the masked tail of a number) is completed, a stored reply that replaced the streamed text (outbound
  moderation) cannot be unsent — it is logged, and the stored reply is what the audit and the history hold.
- Nothing is lost when the client goes away: the message is stored and answered whatever happens to the HTTP
  request; a reply whose answer reached the client is marked delivered (audit ``delivered``).
- The wait ends: after ``reply_timeout_s`` without the reply, :class:`ReplyTimeout` (the reply, when it comes,
  is stored and audited as usual).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from channels.api.request import ChatRequest
from channels.ingress import Accepted
from models import transcript
from models.envelope import ConversationKey, Inbound
from models.infra.bus import Event, Listener
from models.infra.db import transaction
from models.tables import ApiRequestRecord, ReplyRecord

log = logging.getLogger(__name__)

CHANNEL = "api"
CHECK_EVERY_S = 2.0


class ReplyTimeout(Exception):
    """No reply within the wait; the message stays stored and is answered."""


@dataclass(frozen=True)
class Answer:
    text: str
    source: str
    model: str | None
    finish_reason: str  # stop | length (the model's answer cut short)
    prompt_tokens: int
    completion_tokens: int
    reply_id: int


@dataclass(frozen=True)
class Ticket:
    """An accepted request: its conversation, its id (``chatcmpl-…``), its inbound row and the events we follow."""

    key: ConversationKey
    external_id: str
    inbound_id: int
    events: asyncio.Queue[Event]


@dataclass
class Exchange:
    sessions: sessionmaker[Session]
    listener: Listener
    take: Callable[[Inbound], Accepted]  # the adapter's dialogue decision and acceptance
    stored_text: Callable[[str], str]  # how the platform's text is kept (PII masking): for the request's history
    reply_timeout_s: float

    async def open(self, account: str, request: ChatRequest) -> Ticket:
        """Listen to the conversation, then store the request and its message (raises what storing raises)."""
        key = ConversationKey(CHANNEL, account, request.peer())
        external_id = uuid.uuid4().hex
        events = self.listener.subscribe(key.topic())
        try:
            accepted = await run_in_threadpool(self._accept, key, external_id, request)
        except BaseException:
            self.listener.unsubscribe(key.topic(), events)
            raise
        return Ticket(key, external_id, accepted.inbound_id, events)

    async def answer(self, ticket: Ticket) -> AsyncIterator[str | Answer]:
        """The answer's text as it comes, then the :class:`Answer`; stops listening when done or abandoned."""
        try:
            streamed, held = "", ""  # what the client has; whitespace held back (the stored reply is stripped)
            async for item in self._follow(ticket.events, ticket.inbound_id):
                if isinstance(item, Answer):
                    if item.text.startswith(streamed):
                        if item.text[len(streamed):]:
                            yield item.text[len(streamed):]
                    else:
                        log.warning("api: reply %s replaced the streamed text (outbound moderation)", item.reply_id)
                    yield item
                    return
                text = held + item if streamed else (held + item).lstrip()
                body = text.rstrip()
                held = text[len(body):]
                if body:
                    streamed += body
                    yield body
        finally:
            self.listener.unsubscribe(ticket.key.topic(), ticket.events)

    def _accept(self, key: ConversationKey, external_id: str, request: ChatRequest) -> Accepted:
        history = [[role, self.stored_text(text)] for role, text in request.history]
        with transaction(self.sessions) as session:  # before the message: the worker reads it with the message
            session.add(ApiRequestRecord(account=key.account, external_id=external_id, model=request.model,
                                         messages=history))
        return self.take(Inbound(key, external_id, request.question))

    async def _follow(self, events: asyncio.Queue[Event], inbound_id: int) -> AsyncIterator[str | Answer]:
        deadline = time.monotonic() + self.reply_timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplyTimeout(f"no reply within {self.reply_timeout_s:.0f} s")
            try:
                event = await asyncio.wait_for(events.get(), min(left, CHECK_EVERY_S))
            except TimeoutError:
                event = {"type": "check"}
            if event.get("message_id") not in (inbound_id, None):
                continue  # another request of the same conversation
            if event.get("type") == "token" and isinstance(event.get("text"), str):
                yield str(event["text"])
            elif event.get("type") in ("reply", "check"):
                answer = await run_in_threadpool(self._answer, inbound_id)
                if answer is not None:
                    yield answer
                    return

    def _answer(self, inbound_id: int) -> Answer | None:
        with self.sessions() as session:
            row = session.execute(select(ReplyRecord).where(ReplyRecord.inbound_id == inbound_id)).scalar_one_or_none()
            if row is None:
                return None
            finish = "length" if transcript.cut(session, [inbound_id]) else "stop"
            return Answer(row.text, row.source, row.model, finish, row.prompt_tokens, row.completion_tokens, row.id)

    async def delivered(self, ticket: Ticket, reply_id: int) -> None:
        """The whole answer was written to the client: audit ``delivered`` (best effort)."""

        def mark() -> None:
            with transaction(self.sessions) as session:
                transcript.mark_delivered(session, ticket.key, reply_id)

        try:
            await run_in_threadpool(mark)
        except Exception as exc:  # the answer is out; a missing confirmation costs nothing but the audit row
            log.warning("api: could not mark reply %s delivered (%s)", reply_id, type(exc).__name__)

"""What every WeChat-family callback shares once the guard has opened it: the HTTP route and the dialogue.

Shared by the official account (``wechat_mp``), the WeCom app (``wecom``) and WeChat Customer
Service (``wecom_kf``, HTTP side only: its messages arrive by pull). :class:`CallbackAdapter`
serves ``GET``/``POST {path}`` for each configured account (404 for an unknown one): URL
verification, the body limit, :class:`~channels.wechat_guard.CallbackGuard`'s checks, errors as
statuses. :class:`CallbackDialogue` carries out :func:`models.dialogue.decide` for a parsed
message inside the platform's 5 seconds:

- text (and voice with the platform's ``Recognition``) goes to the model unless a rule answers it;
  when the LLM workers report a long queue the customer is told at once to hold on;
- a message for the model over the customer's rate limit (``KEFU_RATE_LIMIT_PEER``) or refused by backpressure
  (:mod:`channels.admission`) is stored and answered at once, passively, with ``rate_limited_reply`` or
  ``backpressure_reply``: never dropped, never queued for the model;
- a voice message without ``Recognition`` is stored with its ``MediaId`` for a worker to download
  and transcribe (nothing slow happens inside the 5 seconds);
- other message types get a polite answer, welcome events the account's welcome, other events nothing;
- a text over ``max_text_chars`` is cut; the customer is told in the reply and the cut is audited
  (:mod:`channels.truncation`);
- a customer asking for a person gets ``handoff_reply`` where the channel's hand-off port has a
  person (an official account with ``human_service``: the message and the rest of the conversation
  go to its staff, :data:`TO_PERSON`, until they close it or ``human_session_ttl_s`` passes without
  a message), and ``handoff_unavailable_reply`` where it has none.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Generic, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from channels import truncation
from channels import wechat_protocol as wx
from channels.admission import admit, refused_answer
from channels.base import ChannelAdapter, ChannelContext, store_decided
from channels.errors import RequestRejected
from channels.http import read_limited
from channels.wechat_guard import CallbackGuard, CallbackKeys
from models import audit
from models.dialogue import Action, Message, decide
from models.envelope import ConversationKey, Inbound, printable
from models.infra.load import current_wait
from models.replies import Answer
from models.states import ReplySource

log = logging.getLogger(__name__)

AccountT = TypeVar("AccountT")


class CallbackAdapter(ChannelAdapter, Generic[AccountT]):
    """``GET``/``POST {path}`` with ``{name}`` the configured account."""

    name: str  # the channel
    path: str  # e.g. "/v1/wechat/{name}"
    unknown: str  # what a 404 says

    def __init__(self, context: ChannelContext) -> None:
        super().__init__(context)
        self.guard = CallbackGuard(context.kv, context.settings.wechat_timestamp_window_s)

    @cached_property
    def dialogue(self) -> CallbackDialogue:
        """For channels whose callbacks carry messages (not kf's "there is news")."""
        return CallbackDialogue(self.ctx)

    def routes(self) -> list[BaseRoute]:
        return [Route(self.path, self.callback, methods=["GET", "POST"])]

    @abstractmethod
    def account(self, name: str) -> AccountT | None:
        """The configured account called ``name``."""

    @abstractmethod
    def keys(self, account: AccountT) -> CallbackKeys:
        """What its callbacks are verified with."""

    @abstractmethod
    def handle(self, account: AccountT, params: dict[str, str], body: bytes) -> str:
        """Verify, accept and answer one callback (runs in a worker thread); the response body."""

    async def callback(self, request: Request) -> Response:
        name = request.path_params["name"]
        account = self.account(name)
        try:
            if account is None:
                raise RequestRejected(404, "unknown_account", self.unknown)
            params = dict(request.query_params)
            if request.method == "GET":
                return PlainTextResponse(self.guard.echo(self.keys(account), params))
            body = await read_limited(request, self.ctx.settings.wechat_max_body_bytes)
            answer = await run_in_threadpool(self.handle, account, params, body)
        except RequestRejected as exc:
            if exc.status == 403:
                log.warning("%s callback refused for %s: %s", self.name, name, exc.code)
            return PlainTextResponse(exc.message, status_code=exc.status)
        return Response(answer, media_type="application/xml" if answer.startswith("<xml>") else "text/plain")


WELCOME_EVENTS = frozenset({"subscribe"})
CLOSED_BY_PERSON = frozenset({"kf_close_session"})  # the official account's staff ended the conversation


class ToPerson:
    """The passive answer "pass this message to the account's customer-service staff"."""


TO_PERSON = ToPerson()


@dataclass(frozen=True, slots=True)
class CallbackMessage:
    """The parts of a parsed callback message (wechatpy's object) the dialogue reads."""

    kind: str  # text, voice, image…, or event
    event: str
    external_id: str
    text: str  # printable and stripped; a voice's Recognition; "" otherwise
    media_id: str | None  # a voice without Recognition: a worker downloads and transcribes it
    received_at: datetime

    @classmethod
    def read(cls, message: Any) -> CallbackMessage:
        kind = str(message.type)
        stamp = getattr(message, "time", None)
        received = datetime.fromtimestamp(int(stamp), UTC) if stamp else datetime.now(UTC)
        text, media_id = "", None
        if kind == "text":
            text = printable(str(message.content or "")).strip()
        elif kind == "voice":
            text = printable(str(getattr(message, "recognition", None) or "")).strip()
            media_id = None if text else wx.media_id_of(getattr(message, "media_id", None))
        event = str(getattr(message, "event", "")) if kind == "event" else ""
        external_id = f"{message.source}:{message.time}:{event}" if event else \
            str(getattr(message, "id", None) or f"{message.source}:{message.time}")
        return cls(kind, event, external_id, text, media_id, received)


class CallbackDialogue:
    """Accepts a parsed callback message and returns the passive reply, when one is ready now."""

    def __init__(self, context: ChannelContext) -> None:
        self.ctx = context

    def answer(self, key: ConversationKey, message: Any, welcome: str,
               welcome_events: frozenset[str] = WELCOME_EVENTS) -> str | ToPerson | None:
        m = CallbackMessage.read(message)
        if m.kind == "event":
            return self._event(key, m, welcome, welcome_events)
        settings, handoff, ingress = self.ctx.settings, self.ctx.handoff, self.ctx.ingress
        read = truncation.cut(m.text, settings.max_text_chars)
        text = read.text
        if handoff.with_person(key):  # a person owns the conversation: the model stays out
            on_desk = handoff.desk_owns(key)  # the console's agents: no transfer to the platform's own staff
            accepted = ingress.accept_for_human(Inbound(key, m.external_id, text or f"[{m.kind}]", m.kind,
                                                        m.received_at), via="desk" if on_desk else "transfer")
            truncation.record(ingress, accepted, key.channel, read)
            return None if on_desk else TO_PERSON
        message = Message(text, m.kind, m.media_id is not None, channel=key.channel)
        decision = decide(settings, message, handoff.availability(key.account))
        stored_text = text or ("" if decision.action is Action.GENERATE else f"[{m.kind}]")
        inbound = Inbound(key, m.external_id, stored_text, m.kind, m.received_at, media_id=m.media_id)
        if decision.action is Action.GENERATE:
            return self._accept(inbound, read)  # the model's reply gets the note when it is sent
        accepted, answer = store_decided(ingress, handoff, inbound, truncation.noted(decision, read), passive=True)
        truncation.record(ingress, accepted, key.channel, read)
        if decision.action is Action.HAND_OFF:  # the notice goes by deliver; the platform's staff get a transfer
            return None if handoff.desk_owns(key) else TO_PERSON
        return answer

    def _event(self, key: ConversationKey, m: CallbackMessage, welcome: str,
               welcome_events: frozenset[str]) -> str | None:
        if m.event in CLOSED_BY_PERSON:
            self.ctx.handoff.release(key)
            return None
        if m.event not in welcome_events:
            return None  # unsubscribe, menu clicks…: nothing to answer
        inbound = Inbound(key, m.external_id, f"[{m.event}]", "event", m.received_at)
        return self.ctx.ingress.accept_answered(inbound, Answer(welcome, ReplySource.WELCOME, why="welcome"))[1]

    def _accept(self, inbound: Inbound, read: truncation.Cut) -> str | None:
        """Queue the message for the model; the busy notice when the model's queue is long. A message admission
        control refuses is stored with the wait reply instead (the passive answer; a platform retry gets it again)."""
        refusal = admit(self.ctx.admission, inbound.key)
        if refusal is not None:
            stored = inbound if inbound.text else replace(inbound, text=f"[{inbound.kind}]")  # an untranscribed voice
            accepted, answer = self.ctx.ingress.accept_answered(stored, refused_answer(self.ctx.admission, refusal))
            truncation.record(self.ctx.ingress, accepted, inbound.key.channel, read)
            return answer
        accepted = self.ctx.ingress.accept(inbound)
        truncation.record(self.ctx.ingress, accepted, inbound.key.channel, read)
        threshold = self.ctx.settings.busy_notice_after_s
        if threshold > 0 and not accepted.duplicate:
            wait = current_wait(self.ctx.kv)
            if wait >= threshold:  # the answer will take a while: say so now rather than nothing
                self.ctx.ingress.note(accepted, inbound.key.channel, audit.BUSY_NOTICE, wait_estimate_s=round(wait, 1))
                return self.ctx.settings.busy_notice
        return None


def passive_text(to_user: str, from_user: str, answer: str) -> str:
    """The XML of a passive text reply, cut to one message's byte limit."""
    return wx.text_reply_xml(to_user, from_user, wx.split_utf8(answer, max_parts=1)[0] if answer else answer,
                             int(time.time()))

"""Opening a WeChat / WeCom callback: every check, in order, before anything is parsed or stored.

Shared by the official account (``wechat_mp``), the WeCom app (``wecom``) and WeChat Customer
Service (``wecom_kf``). Order, so that nothing unauthenticated is parsed or stored: body size (413,
before reading it all) → timestamp window → signature (constant time) → [encrypted: message
signature, then decryption] → XML (DTDs refused) → nonce replay.

The platforms retry a callback with the very same query string and body, so a nonce seen before
with the *same* body is a platform retry (the message id deduplicates it further on); the same
nonce with a different body is a replay attack (403).

The official account signs plaintext callbacks with ``signature`` and encrypted ones additionally
with ``msg_signature``; WeCom (app and kf) always encrypts and signs only with ``msg_signature``,
and its URL verification sends an encrypted ``echostr`` to be answered in plaintext.
"""

from __future__ import annotations

import hashlib
import logging
import time
from abc import abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from channels import wechat_protocol as wx
from channels.base import ChannelAdapter, RequestRejected
from models import audit, quick_replies
from models.envelope import ConversationKey, Inbound, printable
from models.kv import KV
from models.load import current_wait

if TYPE_CHECKING:
    from channels.app import Gateway


@dataclass(frozen=True)
class CallbackKeys:
    """What one configured account verifies its callbacks with."""

    scope: str  # replay-nonce namespace, e.g. "mp:shop"
    token: str
    aes_key: str | None  # EncodingAESKey; None: plaintext only (official account)
    receive_id: str  # appid (official account) or corpid (WeCom)
    corp: bool  # WeCom: always encrypted, signed with msg_signature only


@dataclass(frozen=True)
class Opened:
    """A verified, decrypted callback."""

    plain: bytes  # the message XML
    fields: dict[str, Any]  # its parsed <xml> element
    encrypted: bool
    timestamp: str
    nonce: str


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) as soon as it is larger than ``limit`` — never buffered whole."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(413, "body_too_large", f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestRejected(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestRejected(400, "client_disconnected", "the request body was not received") from None
    return b"".join(chunks)


class CallbackGuard:
    def __init__(self, kv: KV, window_s: int) -> None:
        self._kv = kv
        self._window = window_s

    def echo(self, keys: CallbackKeys, params: dict[str, str]) -> str:
        """The answer to the platform's URL verification (GET)."""
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        wx.require_fresh(timestamp, time.time(), self._window)
        echostr = params.get("echostr", "")
        if not keys.corp:
            wx.require_signature(wx.signature(keys.token, timestamp, nonce), params.get("signature"))
            return echostr
        wx.require_signature(wx.signature(keys.token, timestamp, nonce, echostr), params.get("msg_signature"))
        return wx.decrypt(self._key(keys), keys.receive_id, echostr, corp=True).decode()

    def open(self, keys: CallbackKeys, params: dict[str, str], body: bytes) -> Opened:
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        wx.require_fresh(timestamp, time.time(), self._window)
        if not keys.corp:
            wx.require_signature(wx.signature(keys.token, timestamp, nonce), params.get("signature"))
        encrypted = keys.corp or params.get("encrypt_type", "raw").lower() == "aes"
        if encrypted:
            envelope = wx.parse_xml(body)
            cipher_text = envelope.get("Encrypt")
            if not isinstance(cipher_text, str):
                raise RequestRejected(400, "malformed_xml", "encrypted message without Encrypt")
            wx.require_signature(wx.signature(keys.token, timestamp, nonce, cipher_text), params.get("msg_signature"))
            plain = wx.decrypt(self._key(keys), keys.receive_id, cipher_text, corp=keys.corp)
        else:
            plain = body
        fields = wx.parse_xml(plain)  # refuses DTDs and malformed XML before anything else reads it
        self._check_replay(keys.scope, timestamp, nonce, body)
        return Opened(plain, fields, encrypted, timestamp, nonce)

    def seal(self, keys: CallbackKeys, opened: Opened, xml: str) -> str:
        """A passive reply, encrypted when the callback was."""
        if not opened.encrypted:
            return xml
        return wx.encrypt_envelope(keys.token, self._key(keys), keys.receive_id, xml, opened.nonce, opened.timestamp,
                                   corp=keys.corp)

    @staticmethod
    def _key(keys: CallbackKeys) -> bytes:
        if keys.aes_key is None:
            raise RequestRejected(400, "aes_not_configured", "this account has no EncodingAESKey configured")
        return wx.aes_key(keys.aes_key)

    def _check_replay(self, scope: str, timestamp: str, nonce: str, body: bytes) -> None:
        digest = hashlib.sha256(body).hexdigest()
        slot = f"wxnonce:{scope}:{timestamp}:{nonce}"
        if not self._kv.add(slot, digest, 2 * self._window) and self._kv.get(slot) != digest:
            raise RequestRejected(403, "replayed_nonce", "nonce already used")


log = logging.getLogger(__name__)

Account = TypeVar("Account")


class CallbackAdapter(ChannelAdapter, Generic[Account]):
    """The HTTP side every WeChat-family channel shares: ``GET``/``POST {path}`` with ``{name}`` the
    configured account, 404 for an unknown one, URL verification, the body limit, errors as statuses."""

    path: str  # e.g. "/v1/wechat/{name}"
    unknown: str  # what a 404 says

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.guard = CallbackGuard(gateway.kv, gateway.settings.wechat_timestamp_window_s)

    def routes(self) -> list[BaseRoute]:
        return [Route(self.path, self.callback, methods=["GET", "POST"])]

    @abstractmethod
    def account(self, name: str) -> Account | None:
        """The configured account called ``name``."""

    @abstractmethod
    def keys(self, account: Account) -> CallbackKeys:
        """What its callbacks are verified with."""

    @abstractmethod
    def handle(self, account: Account, params: dict[str, str], body: bytes) -> str:
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
            body = await read_limited(request, self.gw.settings.wechat_max_body_bytes)
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


def human_key(key: ConversationKey) -> str:
    """Set (with a TTL renewed by each message) while the account's staff own the conversation."""
    return f"wechat:human:{key.channel}:{key.account}:{key.peer}"


def answer_or_accept(gw: Gateway, key: ConversationKey, message: Any, welcome: str,
                     welcome_events: frozenset[str] = WELCOME_EVENTS,
                     human_service: bool = False) -> str | ToPerson | None:
    """Accept a parsed callback message (wechatpy's object); return a passive reply when one is ready now.

    Text (and voice with the platform's ``Recognition``) goes to the model unless an FAQ entry
    answers it (and when the LLM workers report a long queue, the customer is told at once to hold
    on); a voice message without ``Recognition`` is stored with its ``MediaId`` for a worker to
    download and transcribe (nothing slow happens inside the platform's 5 seconds); other message
    types get a polite fallback; welcome events get ``welcome``; every other event is ignored.

    A customer asking for a person (转人工) gets ``handoff_reply`` and, with ``human_service``, the
    message and the rest of the conversation go to the account's staff (:data:`TO_PERSON`) until
    they close it or ``human_session_ttl_s`` passes without a message; without it, the customer is
    told no person is available here (``handoff_unavailable_reply``) instead of an empty promise.
    """
    kind = str(message.type)
    received = datetime.fromtimestamp(int(message.time), UTC) if getattr(message, "time", None) else None
    stamp = received or datetime.now(UTC)
    settings = gw.settings
    if kind == "event":
        event = str(getattr(message, "event", ""))
        if event in CLOSED_BY_PERSON:
            gw.kv.delete(human_key(key))
            return None
        if event not in welcome_events:
            return None  # unsubscribe, menu clicks…: nothing to answer
        event_id = f"{message.source}:{message.time}:{event}"
        return _answer_now(gw, Inbound(key, event_id, f"[{event}]", "event", stamp), welcome, "welcome")
    external_id = str(getattr(message, "id", None) or f"{message.source}:{message.time}")
    text = ""
    media_id: str | None = None
    if kind == "text":
        text = printable(str(message.content or "")).strip()
    elif kind == "voice":
        text = printable(str(getattr(message, "recognition", None) or "")).strip()
        media_id = None if text else media_id_of(getattr(message, "media_id", None))
    if human_service and gw.kv.get(human_key(key)):  # a person owns the conversation: the model stays out
        gw.kv.set(human_key(key), "1", settings.human_session_ttl_s)
        gw.ingress.accept_for_human(Inbound(key, external_id, text[: settings.max_text_chars] or f"[{kind}]", kind,
                                            stamp), via="transfer")
        return TO_PERSON
    if not text and media_id is None:
        return _answer_now(gw, Inbound(key, external_id, f"[{kind}]", kind, stamp),
                           quick_replies.unsupported_answer(kind), "rule")
    text = text[: settings.max_text_chars]
    inbound = Inbound(key, external_id, text, kind, stamp, media_id=media_id)
    rule = quick_replies.rule_for(settings, text, hands_off=human_service) if text else None
    if rule is not None and rule.to_person:
        gw.kv.set(human_key(key), "1", settings.human_session_ttl_s)
        gw.ingress.accept_answered(inbound, rule.answer, rule.source, passive=False)
        return TO_PERSON
    if rule is not None:
        return _answer_now(gw, inbound, rule.answer, rule.source)
    accepted = gw.ingress.accept(inbound)
    threshold = gw.settings.busy_notice_after_s
    if threshold > 0 and not accepted.duplicate:
        wait = current_wait(gw.kv)
        if wait >= threshold:  # the answer will take a while: say so now rather than nothing
            gw.ingress.note(accepted, key.channel, audit.BUSY_NOTICE, wait_estimate_s=round(wait, 1))
            return gw.settings.busy_notice
    return None


MEDIA_ID_MAX = 256  # inbound.media_id


def media_id_of(value: object) -> str | None:
    """A platform media id fit to store and to send back in a query string, or None."""
    media_id = str(value or "").strip()
    if not media_id or len(media_id) > MEDIA_ID_MAX or not (media_id.isascii() and media_id.isprintable()) \
            or " " in media_id:
        return None
    return media_id


def _answer_now(gw: Gateway, inbound: Inbound, answer: str, source: str) -> str | None:
    _, text = gw.ingress.accept_answered(inbound, answer, source)
    return text


def passive_text(to_user: str, from_user: str, answer: str) -> str:
    """The XML of a passive text reply, cut to one message's byte limit."""
    return wx.text_reply_xml(to_user, from_user, wx.split_utf8(answer, max_parts=1)[0] if answer else answer,
                             int(time.time()))

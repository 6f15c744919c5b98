"""WeChat official account (公众号) channel: callbacks in, customer-service messages out.

``GET /v1/wechat/{account}`` answers the platform's URL verification; ``POST`` receives messages in
plaintext, compatible or safe (AES) mode. Several accounts run side by side, each configured in
``KEFU_WECHAT_ACCOUNTS`` with its own token, AES key, appid and secret.

Order of checks, so that nothing unauthenticated is parsed or stored: body size (413, before
reading it all) → timestamp window → signature (constant time) → [safe mode: message signature,
then decryption] → XML (DTDs refused) → nonce replay. WeChat retries a callback with the very same
query string and body, so a nonce seen before with the *same* body is a platform retry (the
message id deduplicates it); the same nonce with a different body is a replay attack (403).

The callback is acknowledged at once: a quick reply (FAQ hit, welcome, unsupported message type)
goes back passively in the response; everything else is persisted, queued for the model and
answered through the customer-service message API (:class:`WeChatMPOutbound`), split into at
most 5 messages of at most 2,048 UTF-8 bytes and never outside the 48-hour window.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from wechatpy import parse_message

from channels import wechat_protocol as wx
from channels.base import ChannelAdapter, DeliveryPermanent, DeliveryProgress, Outbound, RequestRejected
from channels.wechat_api import AppCredentials
from models import quick_replies
from models.envelope import ConversationKey, Inbound, Reply, printable
from models.settings import WeChatAccount

if TYPE_CHECKING:
    from channels.app import Gateway

log = logging.getLogger(__name__)

CHANNEL = "wechat_mp"
SERVICE_WINDOW = timedelta(hours=48)
SUCCESS = "success"


def credentials(account: WeChatAccount) -> AppCredentials:
    return AppCredentials("mp", account.appid, account.secret.get_secret_value())


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


class WeChatMPAdapter(ChannelAdapter):
    name = CHANNEL

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def routes(self) -> list[BaseRoute]:
        return [Route("/v1/wechat/{account}", self.callback, methods=["GET", "POST"])]

    async def callback(self, request: Request) -> Response:
        settings = self.gw.settings
        account = settings.wechat_account(request.path_params["account"])
        try:
            if account is None:
                raise RequestRejected(404, "unknown_account", "no WeChat account is configured under this name")
            params = dict(request.query_params)
            if request.method == "GET":
                return PlainTextResponse(self.verify_url(account, params))
            body = await read_limited(request, settings.wechat_max_body_bytes)
            answer = await run_in_threadpool(self.handle, account, params, body)
        except RequestRejected as exc:
            if exc.status == 403:
                log.warning("wechat callback refused for account %s: %s", request.path_params["account"], exc.code)
            return PlainTextResponse(exc.message, status_code=exc.status)
        return Response(answer, media_type="application/xml" if answer != SUCCESS else "text/plain")

    def verify_url(self, account: WeChatAccount, params: dict[str, str]) -> str:
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        wx.require_fresh(timestamp, time.time(), self.gw.settings.wechat_timestamp_window_s)
        token = account.token.get_secret_value()
        wx.require_signature(wx.signature(token, timestamp, nonce), params.get("signature"))
        return params.get("echostr", "")

    def handle(self, account: WeChatAccount, params: dict[str, str], body: bytes) -> str:
        settings = self.gw.settings
        window = settings.wechat_timestamp_window_s
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        wx.require_fresh(timestamp, time.time(), window)
        token = account.token.get_secret_value()
        wx.require_signature(wx.signature(token, timestamp, nonce), params.get("signature"))
        encrypted = params.get("encrypt_type", "raw").lower() == "aes"
        key = b""
        if encrypted:
            if account.aes_key is None:
                raise RequestRejected(400, "aes_not_configured", "this account has no EncodingAESKey configured")
            envelope = wx.parse_xml(body)
            cipher_text = envelope.get("Encrypt")
            if not isinstance(cipher_text, str):
                raise RequestRejected(400, "malformed_xml", "safe-mode message without Encrypt")
            wx.require_signature(wx.signature(token, timestamp, nonce, cipher_text), params.get("msg_signature"))
            key = wx.aes_key(account.aes_key.get_secret_value())
            plain = wx.decrypt(key, account.appid, cipher_text)
        else:
            plain = body
        wx.parse_xml(plain)  # refuses DTDs and malformed XML before wechatpy sees it
        self._check_replay(account, timestamp, nonce, body, window)
        message = parse_message(plain)
        answer = self._dispatch(account, message)
        if answer is None:
            return SUCCESS
        xml = wx.text_reply_xml(message.source, message.target, _clip(answer), int(time.time()))
        if encrypted:
            return wx.encrypt_envelope(token, key, account.appid, xml, nonce, timestamp)
        return xml

    def _check_replay(self, account: WeChatAccount, timestamp: str, nonce: str, body: bytes, window: int) -> None:
        digest = hashlib.sha256(body).hexdigest()
        slot = f"wxnonce:{account.name}:{timestamp}:{nonce}"
        if not self.gw.kv.add(slot, digest, 2 * window) and self.gw.kv.get(slot) != digest:
            raise RequestRejected(403, "replayed_nonce", "nonce already used")

    def _dispatch(self, account: WeChatAccount, message: Any) -> str | None:
        """Accept the message; return a passive reply when one is ready now."""
        key = ConversationKey(CHANNEL, account.name, str(message.source))
        kind = str(message.type)
        received = datetime.fromtimestamp(int(message.time), UTC) if getattr(message, "time", None) else None
        stamp = received or datetime.now(UTC)
        if kind == "event":
            if getattr(message, "event", "") != "subscribe":
                return None  # unsubscribe, menu clicks…: nothing to answer
            event_id = f"{message.source}:{message.time}:subscribe"
            return self._answer_now(Inbound(key, event_id, "[subscribe]", "event", stamp), account.welcome, "welcome")
        external_id = str(getattr(message, "id", None) or f"{message.source}:{message.time}")
        text: str | None = None
        if kind == "text":
            text = printable(str(message.content or "")).strip()
        elif kind == "voice" and getattr(message, "recognition", None):
            text = printable(str(message.recognition)).strip()
        if not text:
            placeholder = f"[{kind}]"
            return self._answer_now(Inbound(key, external_id, placeholder, kind, stamp),
                                    quick_replies.unsupported_answer(kind), "rule")
        text = text[: self.gw.settings.max_text_chars]
        inbound = Inbound(key, external_id, text, kind, stamp)
        faq = quick_replies.faq_answer(self.gw.settings, text)
        if faq is not None:
            return self._answer_now(inbound, faq, "faq")
        self.gw.ingress.accept(inbound)
        return None

    def _answer_now(self, inbound: Inbound, answer: str, source: str) -> str | None:
        _, text = self.gw.ingress.accept_answered(inbound, answer, source)
        return text


def _clip(text: str) -> str:
    return wx.split_utf8(text, max_parts=1)[0] if text else text


class WeChatMPOutbound(Outbound):
    """Customer-service messages (客服消息) through ``/cgi-bin/message/custom/send``."""

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        settings = self.deps.settings
        account = settings.wechat_account(reply.key.account)
        if account is None:
            raise DeliveryPermanent(f"WeChat account {reply.key.account!r} is no longer configured")
        if reply.inbound_at is not None and datetime.now(UTC) - reply.inbound_at > SERVICE_WINDOW:
            raise DeliveryPermanent("outside the 48-hour customer-service window")
        if self.deps.platform is None:
            raise DeliveryPermanent("no platform API client in this worker")
        app = credentials(account)
        parts = wx.split_utf8(reply.text)
        for index in range(progress.parts_sent, len(parts)):
            self.deps.platform.post(app, "/cgi-bin/message/custom/send",
                                    {"touser": reply.key.peer, "msgtype": "text", "text": {"content": parts[index]}})
            progress.record(index + 1)

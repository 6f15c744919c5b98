"""WeChat official account (公众号) channel: callbacks in, customer-service messages out.

``GET /v1/wechat/{name}`` answers the platform's URL verification; ``POST`` receives messages in
plaintext, compatible or safe (AES) mode; an account with ``encrypted_only`` (strict safe mode) refuses
plaintext callbacks with 403 ``encryption_required``, logged with the account's name only. Several accounts
run side by side, each configured in ``KEFU_WECHAT_ACCOUNTS`` with its own token, AES key, appid and secret.

Every callback is verified (size, timestamp, signature, decryption, XML guard, nonce replay) by
:class:`~channels.wechat_guard.CallbackGuard` before anything is parsed or stored, then put through
the dialogue (:class:`~channels.wechat_callback.CallbackDialogue`).

The callback is acknowledged at once: a quick reply (FAQ hit, welcome, unsupported message type)
goes back passively in the response; everything else is persisted, queued for the model and
answered through the customer-service message API (:class:`WeChatMPOutbound`), split into at
most 5 messages of at most 2,048 UTF-8 bytes and never outside the 48-hour window.

Hand-off (:class:`StaffHandOff`): an account with ``human_service`` passes a conversation to its
own customer-service staff with a ``transfer_customer_service`` passive reply, for every message
until the staff close it (``kf_close_session``) or ``human_session_ttl_s`` passes without a message.
A request for a person decided in a worker (a transcribed voice message) marks the conversation the
same way: its notice (``handoff_next_message_reply``: "send your question, a person answers here")
goes out as a customer-service message and the customer's next message is passed to the staff; a
notice that can never be delivered releases the mark.
"""

from __future__ import annotations

import time

from pydantic import Field, SecretStr, model_validator
from wechatpy import parse_message

from channels import truncation
from channels import wechat_protocol as wx
from channels.base import Account, Accounts, Channel, DeliveryPermanent, DeliveryProgress, HandOffPort, Outbound, find
from channels.send_attempts import SendAttempts
from channels.wechat_api import AppCredentials
from channels.wechat_callback import CallbackAdapter, ToPerson, passive_text
from channels.wechat_guard import AesKey, CallbackKeys
from models.dialogue import HandOff
from models.envelope import ConversationKey, Reply
from models.settings import Section, Settings
from models.states import ReplySource

CHANNEL = "wechat_mp"
SUCCESS = "success"


class WeChatAccount(Account):
    """One WeChat official account (公众号), as configured in its admin console; ``name``: /v1/wechat/{name}."""

    appid: str
    secret: SecretStr
    token: SecretStr  # the callback token (令牌)
    aes_key: AesKey | None = None  # EncodingAESKey, 43 characters; needed for compatible and safe mode
    # strict safe mode: plaintext callbacks are refused (403 encryption_required), so a forged callback needs the
    # AES key and not only the token; set it once the console's 消息加解密方式 is 安全模式
    encrypted_only: bool = False
    welcome: str = "您好，欢迎关注！有什么可以帮您？直接发送文字消息即可。"
    # True when the account's own customer-service staff (公众号客服) answer conversations passed to them with a
    # transfer_customer_service reply; False: 转人工 is answered with handoff_unavailable_reply
    human_service: bool = False
    # with human_service, the notice when 转人工 is decided after the callback's reply has gone (a transcribed voice):
    # staff get a conversation only with the customer's next message, so the customer is asked to send it
    handoff_next_message_reply: str = "好的，已为您转人工客服。请直接发送您的问题，人工客服会在这里回复您。"

    @model_validator(mode="after")
    def _strict_needs_the_key(self) -> WeChatAccount:
        if self.encrypted_only and self.aes_key is None:
            raise ValueError("encrypted_only (strict safe mode) needs aes_key, the EncodingAESKey from the console")
        return self


class WeChatMPSettings(Section):
    wechat_accounts: Accounts[WeChatAccount] = Field(default_factory=list)  # JSON list in KEFU_WECHAT_ACCOUNTS


def account(settings: Settings, name: str) -> WeChatAccount | None:
    return find(settings.section(WeChatMPSettings).wechat_accounts, name)


def credentials(account: WeChatAccount) -> AppCredentials:
    return AppCredentials("mp", account.appid, account.secret.get_secret_value())


def media_app(settings: Settings, name: str) -> AppCredentials | None:
    found = account(settings, name)
    return credentials(found) if found is not None else None


def callback_keys(account: WeChatAccount) -> CallbackKeys:
    aes = account.aes_key.get_secret_value() if account.aes_key is not None else None
    return CallbackKeys(f"mp:{account.name}", account.token.get_secret_value(), aes, account.appid, corp=False,
                        encrypted_only=account.encrypted_only)


def human_key(key: ConversationKey) -> str:
    """Set (with a TTL renewed by each message) while the account's staff own the conversation."""
    return f"wechat:human:{key.channel}:{key.account}:{key.peer}"


class StaffHandOff(HandOffPort):
    """The account's own customer-service staff (``human_service``) take over; the marker lives in the KV store."""

    def availability(self, account_name: str) -> HandOff:
        found = account(self.settings, account_name)
        return HandOff.PERSON if found is not None and found.human_service else HandOff.NOBODY

    def begin(self, key: ConversationKey) -> None:
        self.kv.set(human_key(key), "1", self.settings.human_session_ttl_s)

    def with_person(self, key: ConversationKey) -> bool:
        if self.availability(key.account) is HandOff.NOBODY or not self.kv.get(human_key(key)):
            return False
        self.begin(key)  # each message keeps the conversation with its person a while longer
        return True

    def release(self, key: ConversationKey) -> None:
        self.kv.delete(human_key(key))

    def later_notice(self, account_name: str, notice: str) -> str:
        found = account(self.settings, account_name)
        return found.handoff_next_message_reply if found is not None else notice


class WeChatMPAdapter(CallbackAdapter[WeChatAccount]):
    name = CHANNEL
    path = "/v1/wechat/{name}"
    unknown = "no WeChat account is configured under this name"

    def account(self, name: str) -> WeChatAccount | None:
        return account(self.ctx.settings, name)

    def keys(self, account: WeChatAccount) -> CallbackKeys:
        return callback_keys(account)

    def handle(self, account: WeChatAccount, params: dict[str, str], body: bytes) -> str:
        keys = self.keys(account)
        opened = self.guard.open(keys, params, body)
        message = parse_message(opened.plain)
        key = ConversationKey(CHANNEL, account.name, str(message.source))
        answer = self.dialogue.answer(key, message, account.welcome)
        if answer is None:
            return SUCCESS
        if isinstance(answer, ToPerson):
            xml = wx.transfer_reply_xml(str(message.source), str(message.target), int(time.time()))
            return self.guard.seal(keys, opened, xml)
        return self.guard.seal(keys, opened, passive_text(str(message.source), str(message.target), answer))


class WeChatMPOutbound(Outbound):
    """Customer-service messages (客服消息) through ``/cgi-bin/message/custom/send``: at least once (a part in
    flight when a worker dies is sent again and audited ``possible_duplicate``, :mod:`channels.send_attempts`)."""

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        try:
            self._send(reply, progress)
        except DeliveryPermanent:
            if reply.source == ReplySource.HANDOFF:  # the customer never heard of the hand-off: the model answers again
                self.deps.handoff.release(reply.key)
            raise

    def _send(self, reply: Reply, progress: DeliveryProgress) -> None:
        found = account(self.deps.settings, reply.key.account)
        if found is None:
            raise DeliveryPermanent(f"WeChat account {reply.key.account!r} is no longer configured")
        wx.require_service_window(reply.inbound_at)
        if self.deps.platform is None:
            raise DeliveryPermanent("no platform API client in this worker")
        app = credentials(found)
        parts = wx.split_utf8(truncation.outgoing_text(self.deps.sessions, reply))
        attempts = SendAttempts(self.deps.sessions, reply)
        for index in range(progress.parts_sent, len(parts)):
            with attempts.sending(index, idempotent=False):  # the API takes no idempotency key
                self.deps.platform.post(app, "/cgi-bin/message/custom/send", {
                    "touser": reply.key.peer, "msgtype": "text", "text": {"content": parts[index]}})
            progress.record(index + 1)


descriptor = Channel(
    name=CHANNEL, adapter=WeChatMPAdapter, outbound=WeChatMPOutbound, section=WeChatMPSettings,
    handoff=StaffHandOff, platform_api=True, media_app=media_app,
)

"""WeChat official account (公众号) channel: callbacks in, customer-service messages out.

``GET /v1/wechat/{name}`` answers the platform's URL verification; ``POST`` receives messages in
plaintext, compatible or safe (AES) mode. Several accounts run side by side, each configured in
``KEFU_WECHAT_ACCOUNTS`` with its own token, AES key, appid and secret.

Every callback is verified (size, timestamp, signature, decryption, XML guard, nonce replay) by
:class:`~channels.wechat_callback.CallbackGuard` before anything is parsed or stored.

The callback is acknowledged at once: a quick reply (FAQ hit, welcome, unsupported message type)
goes back passively in the response; everything else is persisted, queued for the model and
answered through the customer-service message API (:class:`WeChatMPOutbound`), split into at
most 5 messages of at most 2,048 UTF-8 bytes and never outside the 48-hour window.
"""

from __future__ import annotations

import time

from wechatpy import parse_message

from channels import wechat_protocol as wx
from channels.base import DeliveryPermanent, DeliveryProgress, Outbound
from channels.wechat_api import AppCredentials
from channels.wechat_callback import CallbackAdapter, CallbackKeys, ToPerson, answer_or_accept, passive_text
from models.envelope import ConversationKey, Reply
from models.settings import WeChatAccount

CHANNEL = "wechat_mp"
SUCCESS = "success"


def credentials(account: WeChatAccount) -> AppCredentials:
    return AppCredentials("mp", account.appid, account.secret.get_secret_value())


def callback_keys(account: WeChatAccount) -> CallbackKeys:
    aes = account.aes_key.get_secret_value() if account.aes_key is not None else None
    return CallbackKeys(f"mp:{account.name}", account.token.get_secret_value(), aes, account.appid, corp=False)


class WeChatMPAdapter(CallbackAdapter[WeChatAccount]):
    name = CHANNEL
    path = "/v1/wechat/{name}"
    unknown = "no WeChat account is configured under this name"

    def account(self, name: str) -> WeChatAccount | None:
        return self.gw.settings.wechat_account(name)

    def keys(self, account: WeChatAccount) -> CallbackKeys:
        return callback_keys(account)

    def handle(self, account: WeChatAccount, params: dict[str, str], body: bytes) -> str:
        keys = self.keys(account)
        opened = self.guard.open(keys, params, body)
        message = parse_message(opened.plain)
        key = ConversationKey(CHANNEL, account.name, str(message.source))
        answer = answer_or_accept(self.gw, key, message, account.welcome, human_service=account.human_service)
        if answer is None:
            return SUCCESS
        if isinstance(answer, ToPerson):
            xml = wx.transfer_reply_xml(str(message.source), str(message.target), int(time.time()))
            return self.guard.seal(keys, opened, xml)
        return self.guard.seal(keys, opened, passive_text(str(message.source), str(message.target), answer))


class WeChatMPOutbound(Outbound):
    """Customer-service messages (客服消息) through ``/cgi-bin/message/custom/send``."""

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        settings = self.deps.settings
        account = settings.wechat_account(reply.key.account)
        if account is None:
            raise DeliveryPermanent(f"WeChat account {reply.key.account!r} is no longer configured")
        wx.require_service_window(reply.inbound_at)
        if self.deps.platform is None:
            raise DeliveryPermanent("no platform API client in this worker")
        app = credentials(account)
        parts = wx.split_utf8(reply.text)
        for index in range(progress.parts_sent, len(parts)):
            self.deps.platform.post(app, "/cgi-bin/message/custom/send",
                                    {"touser": reply.key.peer, "msgtype": "text", "text": {"content": parts[index]}})
            progress.record(index + 1)

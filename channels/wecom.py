"""WeCom self-built app (企业微信自建应用) channel: encrypted callbacks in, ``message/send`` out.

``GET /v1/wecom/{name}`` answers URL verification with the decrypted ``echostr`` (WeCom allows one
second; this is a signature check and one AES block chain, well under a millisecond). ``POST``
receives the app's encrypted callbacks. Several apps, of one corp or several, run side by side,
each configured in ``KEFU_WECOM_APPS`` with its corpid, agentid, secret, token and AES key.

Callbacks are verified by :class:`~channels.wechat_guard.CallbackGuard` like the official
account's (receive id: the corpid). Quick answers (FAQ, welcome on ``subscribe``/``enter_agent``,
unsupported types) go back passively, encrypted; the rest is answered by the model through
``/cgi-bin/message/send`` in parts of at most 2,048 UTF-8 bytes; a retried delivery resumes after
the last part WeCom accepted. (WeCom's own ``enable_duplicate_check`` is left off: it compares
content, and would swallow a second, identical answer to a second, identical question.)
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from wechatpy.enterprise import parse_message

from channels import truncation
from channels import wechat_protocol as wx
from channels.base import Account, Accounts, Channel, DeliveryPermanent, DeliveryProgress, Outbound, RequestRejected, find
from channels.send_attempts import SendAttempts
from channels.wechat_api import AppCredentials
from channels.wechat_callback import CallbackAdapter, passive_text
from channels.wechat_guard import AesKey, CallbackKeys
from models.envelope import ConversationKey, Reply
from models.settings import Section, Settings

CHANNEL = "wecom"
WELCOME_EVENTS = frozenset({"subscribe", "enter_agent"})


class WeComApp(Account):
    """One WeCom self-built app (企业微信自建应用); ``name``: /v1/wecom/{name}."""

    corpid: str
    agentid: int
    secret: SecretStr  # the app's Secret
    token: SecretStr  # 接收消息 → Token
    aes_key: AesKey  # 接收消息 → EncodingAESKey (WeCom callbacks are always encrypted)
    welcome: str = "您好！我是智能客服，有什么可以帮您？"


class WeComSettings(Section):
    wecom_apps: Accounts[WeComApp] = Field(default_factory=list)  # JSON list in KEFU_WECOM_APPS


def app(settings: Settings, name: str) -> WeComApp | None:
    return find(settings.section(WeComSettings).wecom_apps, name)


def credentials(app: WeComApp) -> AppCredentials:
    return AppCredentials("corp", app.corpid, app.secret.get_secret_value())


def media_app(settings: Settings, name: str) -> AppCredentials | None:
    found = app(settings, name)
    return credentials(found) if found is not None else None


def callback_keys(app: WeComApp) -> CallbackKeys:
    return CallbackKeys(f"wecom:{app.name}", app.token.get_secret_value(), app.aes_key.get_secret_value(),
                        app.corpid, corp=True)


class WeComAdapter(CallbackAdapter[WeComApp]):
    name = CHANNEL
    path = "/v1/wecom/{name}"
    unknown = "no WeCom app is configured under this name"

    def account(self, name: str) -> WeComApp | None:
        return app(self.ctx.settings, name)

    def keys(self, account: WeComApp) -> CallbackKeys:
        return callback_keys(account)

    def handle(self, app: WeComApp, params: dict[str, str], body: bytes) -> str:
        keys = self.keys(app)
        opened = self.guard.open(keys, params, body)
        message = parse_message(opened.plain)
        agent = getattr(message, "agent", None)
        if agent is not None and str(agent) != str(app.agentid):
            raise RequestRejected(400, "wrong_agent", "the message is addressed to another app of this corp")
        key = ConversationKey(CHANNEL, app.name, str(message.source))
        answer = self.dialogue.answer(key, message, app.welcome, WELCOME_EVENTS)
        if not isinstance(answer, str):  # None (an app has no staff to pass a conversation to)
            return ""  # WeCom: an empty 200 acknowledges without a passive reply
        return self.guard.seal(keys, opened, passive_text(str(message.source), str(message.target), answer))


class WeComOutbound(Outbound):
    """App messages (应用消息) through ``/cgi-bin/message/send``: at least once (a part in flight when a worker
    dies is sent again and audited ``possible_duplicate``, :mod:`channels.send_attempts`)."""

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        found = app(self.deps.settings, reply.key.account)
        if found is None:
            raise DeliveryPermanent(f"WeCom app {reply.key.account!r} is no longer configured")
        if self.deps.platform is None:
            raise DeliveryPermanent("no platform API client in this worker")
        parts = wx.split_utf8(truncation.outgoing_text(self.deps.sessions, reply), max_parts=None)
        attempts = SendAttempts(self.deps.sessions, reply)
        for index in range(progress.parts_sent, len(parts)):
            # no idempotency key (enable_duplicate_check compares content: it would drop a repeated answer)
            with attempts.sending(index, idempotent=False):
                answer = self.deps.platform.post(credentials(found), "/cgi-bin/message/send", {
                    "touser": reply.key.peer, "msgtype": "text", "agentid": found.agentid,
                    "text": {"content": parts[index]},
                })
            if answer.get("invaliduser"):
                raise DeliveryPermanent("the member is not in this app's visible range (invaliduser)")
            progress.record(index + 1)


descriptor = Channel(name=CHANNEL, adapter=WeComAdapter, outbound=WeComOutbound, section=WeComSettings,
                     platform_api=True, media_app=media_app)

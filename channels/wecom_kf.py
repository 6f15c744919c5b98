"""WeChat Customer Service (微信客服) channel: "there is news" callbacks, ``kf/sync_msg`` pulls, ``kf/send_msg``.

The ``kf_msg_or_event`` callback carries no message, only the 客服账号 (``OpenKfId``) and a sync
token. ``POST /v1/wecom-kf/{account}`` verifies it (:class:`~channels.wechat_callback.CallbackGuard`,
receive id: the corpid), bumps that account's ``kf_cursor.requested``, publishes ``kefu.kf_sync``
and answers at once. The pull runs in an io worker (:class:`KfSync`):

- one sync per (account, open_kfid) at a time, under a lock; a sync that finds the lock taken
  retries shortly, so news that arrives during a sync is never left unread;
- every page: all customer messages of ``msg_list`` are persisted (their ``msgid`` is the dedup
  key), *then* ``next_cursor`` is stored; ``has_more`` is followed to the end. A crash between the
  two re-reads one page and the messages already stored are skipped without an API call — a restart
  neither loses nor repeats a message;
- the sweeper publishes the sync again for any account whose news no finished sync has read.

Dialogue rules: a message while a human owns the conversation (service state 2 or 3) is stored
for the human and the model stays out; a customer asking for a person (``handoff_keywords``) gets
``handoff_reply`` and the session is moved to the queue pool (state 2) or to the configured servicer
(state 3) with ``kf/service_state/trans``; so is a conversation the model could not answer (its
fallback reply) unless ``handoff_on_fallback`` is off. FAQ hits and unsupported message types are
answered at once without the model. A voice message (``voice.media_id``) is queued as it is: the
worker downloads it (WeCom ``media/get``), transcribes it and applies the same rules to the text
(:mod:`workers.voice`). Replies go through ``kf/send_msg`` with our own ``msgid``,
at most 5 messages of 2,048 UTF-8 bytes within 48 hours of the customer's message; 95018 (the
session state no longer allows it: a human took over) is a permanent, recorded failure.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from channels import wechat_protocol as wx
from channels.base import DeliveryPermanent, DeliveryProgress, Outbound, RequestRejected
from channels.ingress import Ingress
from channels.wechat_api import AppCredentials, PlatformAPI, PlatformPermanent
from channels.wechat_callback import CallbackAdapter, CallbackKeys, media_id_of
from models import audit, quick_replies
from models.db import insert_ignoring_conflict, transaction
from models.envelope import ConversationKey, Inbound, Reply, printable, utcnow
from models.kv import KV
from models.locks import Locks
from models.queues import Publisher
from models.settings import Settings, WeComKfAccount
from models.tables import InboundRecord, KfCursorRecord

log = logging.getLogger(__name__)

CHANNEL = "wecom_kf"
PAGE_LIMIT = 1000  # the most kf/sync_msg returns in one page
SYNC_TOKEN_TTL_S = 600  # the callback's Token is valid for 10 minutes
SYNC_LOCK_TTL_S = 300
HANDOFF_PENDING_TTL_S = 120  # the notice's delivery (with its retries) and the transfer happen well within this
ORIGIN_CUSTOMER = 3  # msg_list origin: 3 customer, 4 system event, 5 a servicer in the WeCom client
HUMAN_STATES = frozenset({2, 3})  # 2 waiting in the pool for a person, 3 served by a person
POOL, SERVICER = 2, 3
INVALID_SYNC_TOKEN = 95007
STATE_FORBIDS_SENDING = 95018


def credentials(account: WeComKfAccount) -> AppCredentials:
    return AppCredentials("corp", account.corpid, account.secret.get_secret_value())


def callback_keys(account: WeComKfAccount) -> CallbackKeys:
    return CallbackKeys(f"kf:{account.name}", account.token.get_secret_value(), account.aes_key.get_secret_value(),
                        account.corpid, corp=True)


def peer(open_kfid: str, external_userid: str) -> str:
    """A conversation's peer: the customer *of one* 客服账号 (the same person may write to several)."""
    return f"{open_kfid}/{external_userid}"


def split_peer(value: str) -> tuple[str, str]:
    open_kfid, _, external_userid = value.partition("/")
    return open_kfid, external_userid


def handoff_key(account: str, open_kfid: str, user: str) -> str:
    """Set while a hand-off is decided but ``trans`` has not happened yet (see ``KfSync._service_state``)."""
    return f"kf:handoff:{account}:{open_kfid}:{user}"


def _sync_token_key(account: str, open_kfid: str) -> str:
    return f"kfsynctoken:{account}:{open_kfid}"


def request_sync(sessions: sessionmaker[Session], publisher: Publisher, kv: KV, account: str, open_kfid: str,
                 sync_token: str | None) -> None:
    """Record that there is news for (account, open_kfid) and publish the pull; durable before it returns."""
    if sync_token:
        kv.set(_sync_token_key(account, open_kfid), sync_token, SYNC_TOKEN_TTL_S)
    with transaction(sessions) as session:
        insert_ignoring_conflict(session, KfCursorRecord,
                                 {"account": account, "open_kfid": open_kfid, "cursor": None, "requested": 0,
                                  "synced": 0, "requested_at": utcnow()},
                                 ["account", "open_kfid"])
        session.execute(update(KfCursorRecord)
                        .where(KfCursorRecord.account == account, KfCursorRecord.open_kfid == open_kfid)
                        .values(requested=KfCursorRecord.requested + 1, requested_at=utcnow()))
    try:
        publisher.kf_sync(account, open_kfid)
    except Exception as exc:  # the request is recorded: the sweeper publishes the sync later
        log.error("publish of kf sync for %s/%s failed: %s", account, open_kfid, type(exc).__name__)


class WeComKfAdapter(CallbackAdapter[WeComKfAccount]):
    name = CHANNEL
    path = "/v1/wecom-kf/{name}"
    unknown = "no WeChat Customer Service account is configured under this name"

    def account(self, name: str) -> WeComKfAccount | None:
        return self.gw.settings.wecom_kf_account(name)

    def keys(self, account: WeComKfAccount) -> CallbackKeys:
        return callback_keys(account)

    def handle(self, account: WeComKfAccount, params: dict[str, str], body: bytes) -> str:
        """Record the news and publish the pull; the empty answer acknowledges it."""
        fields = self.guard.open(self.keys(account), params, body).fields
        if fields.get("MsgType") != "event" or fields.get("Event") != "kf_msg_or_event":
            return ""  # other corp events reach this URL too; none of them is a customer message
        open_kfid = fields.get("OpenKfId")
        if not isinstance(open_kfid, str) or not 0 < len(open_kfid) <= 64 or not open_kfid.isprintable():
            raise RequestRejected(400, "missing_open_kfid", "kf_msg_or_event without a valid OpenKfId")
        token = fields.get("Token")
        request_sync(self.gw.sessions, self.gw.publisher, self.gw.kv, account.name, open_kfid,
                     token if isinstance(token, str) else None)
        return ""


class SyncBusy(Exception):
    """Another worker is pulling this account right now; try again in a moment."""


class KfSync:
    """Pulls one 客服账号's new messages with ``kf/sync_msg`` and hands each to ingress."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], ingress: Ingress,
                 platform: PlatformAPI, kv: KV, locks: Locks) -> None:
        self._settings, self._sessions, self._ingress = settings, sessions, ingress
        self._platform, self._kv, self._locks = platform, kv, locks

    def run(self, name: str, open_kfid: str) -> int:
        """Read everything new; the number of new customer messages stored. Raises SyncBusy."""
        account = self._settings.wecom_kf_account(name)
        if account is None:  # marked done, or the sweeper would publish it again for ever
            log.error("kf sync for unknown account %r dropped (no longer configured?)", name)
            with transaction(self._sessions) as session:
                session.execute(update(KfCursorRecord)
                                .where(KfCursorRecord.account == name, KfCursorRecord.open_kfid == open_kfid)
                                .values(synced=KfCursorRecord.requested, synced_at=utcnow()))
            return 0
        with self._locks.hold(f"kfsync:{name}:{open_kfid}", ttl_s=SYNC_LOCK_TTL_S, wait_s=0) as acquired:
            if not acquired:
                raise SyncBusy(f"{name}/{open_kfid}")
            stored = 0
            while True:
                with self._sessions() as session:
                    row = session.scalars(select(KfCursorRecord).where(
                        KfCursorRecord.account == name, KfCursorRecord.open_kfid == open_kfid)).first()
                if row is None or row.requested <= row.synced:
                    return stored
                target = row.requested
                stored += self._drain(account, open_kfid, row.cursor)
                with transaction(self._sessions) as session:
                    session.execute(update(KfCursorRecord)
                                    .where(KfCursorRecord.id == row.id, KfCursorRecord.synced < target)
                                    .values(synced=target, synced_at=utcnow()))

    def _drain(self, account: WeComKfAccount, open_kfid: str, cursor: str | None) -> int:
        stored = 0
        while True:
            page = self._page(account, open_kfid, cursor)
            stored += self._store(account, open_kfid, page.get("msg_list") or [])
            next_cursor = page.get("next_cursor") or cursor
            if next_cursor != cursor:  # only now: every message of the page is in the database
                with transaction(self._sessions) as session:
                    session.execute(update(KfCursorRecord)
                                    .where(KfCursorRecord.account == account.name,
                                           KfCursorRecord.open_kfid == open_kfid)
                                    .values(cursor=next_cursor))
                cursor = next_cursor
            if not page.get("has_more"):
                return stored

    def _page(self, account: WeComKfAccount, open_kfid: str, cursor: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {"open_kfid": open_kfid, "limit": PAGE_LIMIT}
        if cursor:
            payload["cursor"] = cursor
        token = self._kv.get(_sync_token_key(account.name, open_kfid))
        if token:
            payload["token"] = token
        try:
            return self._platform.post(credentials(account), "/cgi-bin/kf/sync_msg", payload)
        except PlatformPermanent as exc:
            if exc.errcode != INVALID_SYNC_TOKEN or not token:
                raise
            self._kv.delete(_sync_token_key(account.name, open_kfid))  # expired: pull without it
            payload.pop("token")
            return self._platform.post(credentials(account), "/cgi-bin/kf/sync_msg", payload)

    def _store(self, account: WeComKfAccount, open_kfid: str, messages: list[dict[str, Any]]) -> int:
        customer = [m for m in messages if isinstance(m, dict) and m.get("origin") == ORIGIN_CUSTOMER
                    and m.get("open_kfid", open_kfid) == open_kfid and m.get("msgid") and m.get("external_userid")]
        if not customer:
            return 0
        with self._sessions() as session:
            known = set(session.scalars(select(InboundRecord.external_id).where(
                InboundRecord.channel == CHANNEL, InboundRecord.account == account.name,
                InboundRecord.external_id.in_([str(m["msgid"]) for m in customer]))))
        states: dict[str, int] = {}
        stored = 0
        for message in customer:
            if str(message["msgid"]) in known:
                continue  # read before a restart: already stored (and answered or on its way)
            user = str(message["external_userid"])
            if user not in states:
                states[user] = self._service_state(account, open_kfid, user)
            states[user] = self._accept(account, open_kfid, message, states[user])
            stored += 1
        return stored

    def _service_state(self, account: WeComKfAccount, open_kfid: str, user: str) -> int:
        """Who serves the customer now. A hand-off Kefu decided but has not carried out yet (the notice is
        still on its way, ``trans`` comes after it) counts as done: the next message is for the person."""
        if self._kv.get(handoff_key(account.name, open_kfid, user)):
            return POOL
        try:
            answer = self._platform.post(credentials(account), "/cgi-bin/kf/service_state/get",
                                         {"open_kfid": open_kfid, "external_userid": user})
        except PlatformPermanent as exc:  # one customer's broken state must not stop the account's sync
            log.error("kf service_state/get failed for a customer of %s (errcode %s); the model answers",
                      account.name, exc.errcode)
            return 0
        return int(answer.get("service_state", 0))

    def _accept(self, account: WeComKfAccount, open_kfid: str, message: dict[str, Any], state: int) -> int:
        """Store one customer message on the path the dialogue rules choose; the session state after it."""
        settings = self._settings
        key = ConversationKey(CHANNEL, account.name, peer(open_kfid, str(message["external_userid"])))
        kind = str(message.get("msgtype") or "text")
        body = message.get(kind)
        text = printable(str(body.get("content", ""))).strip() if kind == "text" and isinstance(body, dict) else ""
        media_id = media_id_of(body.get("media_id")) if kind == "voice" and isinstance(body, dict) else None
        sent = message.get("send_time")
        received = datetime.fromtimestamp(int(sent), UTC) if isinstance(sent, int) else utcnow()
        text = text[: settings.max_text_chars]
        if state in HUMAN_STATES:  # the person serving the customer hears a voice in their own client
            self._ingress.accept_for_human(Inbound(key, str(message["msgid"]), text or f"[{kind}]", kind, received,
                                                   media_id=media_id), service_state=state)
            return state
        # a voice's text comes later, from the worker's transcription
        inbound = Inbound(key, str(message["msgid"]), text or ("" if media_id else f"[{kind}]"), kind, received,
                          media_id=media_id)
        if media_id:
            self._ingress.accept(inbound)  # downloaded, transcribed and put through these rules by the worker
        elif not text:
            self._ingress.accept_answered(inbound, quick_replies.unsupported_answer(kind), "rule", passive=False)
        elif (rule := quick_replies.rule_for(settings, text, hands_off=True)) is not None and rule.to_person:
            self._kv.set(handoff_key(account.name, open_kfid, str(message["external_userid"])), "1",
                         HANDOFF_PENDING_TTL_S)  # before the notice is stored: the next sync must see it
            self._ingress.accept_answered(inbound, rule.answer, rule.source, passive=False)
            return POOL  # what follows in this page is for the person taking over
        elif rule is not None:
            self._ingress.accept_answered(inbound, rule.answer, rule.source, passive=False)
        else:
            self._ingress.accept(inbound)
        return state


class WeComKfOutbound(Outbound):
    """Replies through ``/cgi-bin/kf/send_msg``; hand-off through ``kf/service_state/trans``."""

    hands_off = True

    def send(self, reply: Reply, progress: DeliveryProgress) -> None:
        account = self.deps.settings.wecom_kf_account(reply.key.account)
        if account is None:
            raise DeliveryPermanent(f"WeChat Customer Service account {reply.key.account!r} is no longer configured")
        platform = self.deps.platform
        if platform is None:
            raise DeliveryPermanent("no platform API client in this worker")
        open_kfid, user = split_peer(reply.key.peer)
        parts = wx.split_utf8(reply.text)
        try:
            wx.require_service_window(reply.inbound_at)
            for index in range(progress.parts_sent, len(parts)):
                try:
                    platform.post(credentials(account), "/cgi-bin/kf/send_msg", {
                        "touser": user, "open_kfid": open_kfid, "msgid": f"kefu-{reply.reply_id}-{index}",
                        "msgtype": "text", "text": {"content": parts[index]},
                    })
                except PlatformPermanent as exc:
                    if exc.errcode == STATE_FORBIDS_SENDING:
                        raise DeliveryPermanent("errcode 95018: the session state no longer allows sending "
                                                "(a person has taken over); not sent") from exc
                    raise
                progress.record(index + 1)
        except DeliveryPermanent:
            if reply.source == "handoff" and self.deps.kv is not None:  # no notice, no transfer: no person is
                self.deps.kv.delete(handoff_key(account.name, open_kfid, user))  # coming, so the model answers again
            raise
        if reply.source == "handoff" or (reply.source == "fallback" and account.handoff_on_fallback):
            self._hand_off(account, open_kfid, user, reply)

    def _hand_off(self, account: WeComKfAccount, open_kfid: str, user: str, reply: Reply) -> None:
        platform = self.deps.platform
        assert platform is not None
        app = credentials(account)
        ids = {"open_kfid": open_kfid, "external_userid": user}
        state = int(platform.post(app, "/cgi-bin/kf/service_state/get", ids).get("service_state", 0))
        if state not in HUMAN_STATES:  # a retried delivery after a successful transfer does not transfer twice
            target = SERVICER if account.servicer_userid else POOL
            payload: dict[str, Any] = {**ids, "service_state": target}
            if account.servicer_userid:
                payload["servicer_userid"] = account.servicer_userid
            platform.post(app, "/cgi-bin/kf/service_state/trans", payload)
            state = target
        if self.deps.kv is not None:  # the platform says who serves the customer from now on
            self.deps.kv.delete(handoff_key(account.name, open_kfid, user))
        with transaction(self.deps.sessions) as session:
            audit.record(session, audit.HANDED_OFF, channel=CHANNEL, conversation_id=reply.conversation_id,
                         inbound_id=reply.inbound_id, reply_id=reply.reply_id, service_state=state,
                         reason="asked for a person" if reply.source == "handoff" else "model could not answer")

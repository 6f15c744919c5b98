"""The kf callback: "there is news" for a 客服账号; it records the request and publishes the pull.

A pull is published only when none is already on its way (:mod:`channels.wecom_kf.queued`), and a
platform retry of a callback that was already recorded (the same timestamp and nonce, accepted by the
guard as a retry) records and publishes nothing: it is answered at once.
"""

from __future__ import annotations

import logging

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from channels.errors import RequestRejected
from channels.wechat_callback import CallbackAdapter
from channels.wechat_guard import CallbackKeys
from channels.wecom_kf import queued
from channels.wecom_kf.config import CHANNEL, WeComKfAccount, account, callback_keys
from models.envelope import utcnow
from models.infra.db import insert_ignoring_conflict, transaction
from models.infra.kv import KV
from models.infra.queues import Publisher
from models.tables import KfCursorRecord

log = logging.getLogger(__name__)

SYNC_TOKEN_TTL_S = 600  # the callback's Token is valid for 10 minutes


def sync_token_key(account: str, open_kfid: str) -> str:
    return f"kfsynctoken:{account}:{open_kfid}"


def recorded_key(account: str, timestamp: str, nonce: str) -> str:
    """Set once a callback's news is recorded: a platform retry of it then changes nothing."""
    return f"kfnews:{account}:{timestamp}:{nonce}"


def request_sync(sessions: sessionmaker[Session], publisher: Publisher, kv: KV, account: str, open_kfid: str,
                 sync_token: str | None) -> None:
    """Record that there is news for (account, open_kfid) and publish the pull unless one is on its way;
    durable before it returns, and before the KV store is touched (the guard lets an encrypted callback through
    while that store is down: a failure after this point costs a delay, not the news)."""
    with transaction(sessions) as session:
        insert_ignoring_conflict(session, KfCursorRecord,
                                 {"account": account, "open_kfid": open_kfid, "cursor": None, "requested": 0,
                                  "synced": 0, "requested_at": utcnow()},
                                 ["account", "open_kfid"])
        session.execute(update(KfCursorRecord)
                        .where(KfCursorRecord.account == account, KfCursorRecord.open_kfid == open_kfid)
                        .values(requested=KfCursorRecord.requested + 1, requested_at=utcnow()))
    if sync_token:
        kv.set(sync_token_key(account, open_kfid), sync_token, SYNC_TOKEN_TTL_S)
    if not queued.claim(kv, account, open_kfid):
        return  # the queued pull reads what was just recorded: it reads ``requested`` after clearing the mark
    try:
        publisher.pull(CHANNEL, account, open_kfid)
    except Exception as exc:  # the request is recorded: the sweeper publishes the sync later
        queued.clear(kv, account, open_kfid)
        log.error("publish of kf sync for %s/%s failed: %s", account, open_kfid, type(exc).__name__)


class WeComKfAdapter(CallbackAdapter[WeComKfAccount]):
    name = CHANNEL
    path = "/v1/wecom-kf/{name}"
    unknown = "no WeChat Customer Service account is configured under this name"

    def account(self, name: str) -> WeComKfAccount | None:
        return account(self.ctx.settings, name)

    def keys(self, account: WeComKfAccount) -> CallbackKeys:
        return callback_keys(account)

    def handle(self, account: WeComKfAccount, params: dict[str, str], body: bytes) -> str:
        """Record the news and publish the pull; the empty answer acknowledges it."""
        opened = self.guard.open(self.keys(account), params, body)
        fields = opened.fields
        if fields.get("MsgType") != "event" or fields.get("Event") != "kf_msg_or_event":
            return ""  # other corp events reach this URL too; none of them is a customer message
        open_kfid = fields.get("OpenKfId")
        if not isinstance(open_kfid, str) or not 0 < len(open_kfid) <= 64 or not open_kfid.isprintable():
            raise RequestRejected(400, "missing_open_kfid", "kf_msg_or_event without a valid OpenKfId")
        recorded = recorded_key(account.name, opened.timestamp, opened.nonce)
        if opened.retry and self.ctx.kv.get(recorded):
            return ""  # the platform did not see our answer in time; its first delivery is recorded
        token = fields.get("Token")
        request_sync(self.ctx.sessions, self.ctx.publisher, self.ctx.kv, account.name, open_kfid,
                     token if isinstance(token, str) else None)
        self.ctx.kv.set(recorded, "1", 2 * self.ctx.settings.wechat_timestamp_window_s)
        return ""

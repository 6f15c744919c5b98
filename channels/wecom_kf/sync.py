"""The pull: ``kf/sync_msg`` pages of one 客服账号, each customer message put through the dialogue and stored.

Runs in an io worker (``kefu.pull``, the channel's puller). One sync per (account, open_kfid) at a time,
under a short lease (:data:`SYNC_LEASE_S`) renewed while the sync runs, so a sync killed mid-way blocks
the next one for seconds, not minutes; a sync that finds the lease taken raises
:class:`~channels.base.PullBusy` and is retried shortly, so news that arrives during a sync is never left
unread. At most one pull per source is queued or waiting (:mod:`channels.wecom_kf.queued`): the waiting
one keeps the mark, and clears it once it holds the lease, before it reads what was requested.
Every page: all customer messages are persisted (their ``msgid`` is the dedup key), *then* ``next_cursor``
is stored; ``has_more`` is followed to the end. A crash between the two re-reads one page and the messages
already stored are skipped without an API call.
A message for the model over the customer's rate limit (``KEFU_RATE_LIMIT_PEER``) or refused by backpressure
(:mod:`channels.admission`) is stored with the wait reply (delivered like any other), not queued for the model.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from channels import truncation
from channels import wechat_protocol as wx
from channels.admission import admit, refused_answer
from channels.base import PullBusy, PullDeps, Puller, store_decided
from channels.wechat_api import PlatformPermanent
from channels.wecom_kf import queued
from channels.wecom_kf.adapter import sync_token_key
from channels.wecom_kf.config import CHANNEL, WeComKfAccount, account, credentials, peer, split_peer
from channels.wecom_kf.handoff import HUMAN_STATES, POOL
from models.dialogue import Action, Message, decide
from models.envelope import ConversationKey, Inbound, printable, utcnow
from models.infra.db import transaction
from models.tables import InboundRecord, KfCursorRecord

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000  # the most kf/sync_msg returns in one page
SYNC_LEASE_S = 10.0  # renewed every third of it while the sync runs; a killed sync frees it within this
ORIGIN_CUSTOMER = 3  # msg_list origin: 3 customer, 4 system event, 5 a servicer in the WeCom client
INVALID_SYNC_TOKEN = 95007


class KfSync(Puller):
    """Pulls one 客服账号's (source: its open_kfid) new messages with ``kf/sync_msg`` and hands each to ingress."""

    def __init__(self, deps: PullDeps) -> None:
        super().__init__(deps)
        if deps.platform is None:
            raise ValueError("the kf pull needs the platform API client (the channel's platform_api)")
        self._settings, self._sessions, self._ingress = deps.settings, deps.sessions, deps.ingress
        self._platform, self._kv, self._locks, self._handoff = deps.platform, deps.kv, deps.locks, deps.handoff
        self._admission = deps.admission

    def unfinished(self, session: Session, requested_before: datetime, limit: int) -> list[tuple[str, str]]:
        """Sources with unread news and no pull on its way; each one returned is marked queued (the sweeper
        publishes it; a publish that fails leaves the mark to expire, :data:`~channels.wecom_kf.queued.QUEUED_TTL_S`)."""
        rows = session.execute(
            select(KfCursorRecord.account, KfCursorRecord.open_kfid)
            .where(KfCursorRecord.requested > KfCursorRecord.synced, KfCursorRecord.requested_at < requested_before)
            .limit(limit)
        ).all()
        return [(str(account), str(open_kfid)) for account, open_kfid in rows
                if queued.claim(self._kv, str(account), str(open_kfid))]

    def run(self, name: str, open_kfid: str) -> int:
        """Read everything new; the number of new customer messages stored. Raises PullBusy."""
        found = account(self._settings, name)
        if found is None:  # marked done, or the sweeper would publish it again for ever
            log.error("kf sync for unknown account %r dropped (no longer configured?)", name)
            queued.clear(self._kv, name, open_kfid)
            with transaction(self._sessions) as session:
                session.execute(update(KfCursorRecord)
                                .where(KfCursorRecord.account == name, KfCursorRecord.open_kfid == open_kfid)
                                .values(synced=KfCursorRecord.requested, synced_at=utcnow()))
            return 0
        with self._locks.lease(f"kfsync:{name}:{open_kfid}", ttl_s=SYNC_LEASE_S) as acquired:
            if not acquired:
                queued.keep(self._kv, name, open_kfid)  # still on its way: no other pull is queued meanwhile
                raise PullBusy(f"{name}/{open_kfid}")
            queued.clear(self._kv, name, open_kfid)  # before reading ``requested``: later news publishes again
            stored = 0
            while True:
                with self._sessions() as session:
                    row = session.scalars(select(KfCursorRecord).where(
                        KfCursorRecord.account == name, KfCursorRecord.open_kfid == open_kfid)).first()
                if row is None or row.requested <= row.synced:
                    return stored
                target = row.requested
                stored += self._drain(found, open_kfid, row.cursor)
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
        token = self._kv.get(sync_token_key(account.name, open_kfid))
        if token:
            payload["token"] = token
        try:
            return self._platform.post(credentials(account), "/cgi-bin/kf/sync_msg", payload)
        except PlatformPermanent as exc:
            if exc.errcode != INVALID_SYNC_TOKEN or not token:
                raise
            self._kv.delete(sync_token_key(account.name, open_kfid))  # expired: pull without it
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
            key = ConversationKey(CHANNEL, account.name, peer(open_kfid, str(message["external_userid"])))
            if key.peer not in states:
                states[key.peer] = self._service_state(account, key)
            states[key.peer] = self._accept(key, message, states[key.peer])
            stored += 1
        return stored

    def _service_state(self, account: WeComKfAccount, key: ConversationKey) -> int:
        """Who serves the customer now. A hand-off Kefu decided but has not carried out yet (the notice is
        still on its way, ``trans`` comes after it) counts as done: the next message is for the person."""
        if self._handoff.with_person(key):
            return POOL
        open_kfid, user = split_peer(key.peer)
        try:
            answer = self._platform.post(credentials(account), "/cgi-bin/kf/service_state/get",
                                         {"open_kfid": open_kfid, "external_userid": user})
        except PlatformPermanent as exc:  # one customer's broken state must not stop the account's sync
            log.error("kf service_state/get failed for a customer of %s (errcode %s); the model answers",
                      account.name, exc.errcode)
            return 0
        return int(answer.get("service_state", 0))

    def _accept(self, key: ConversationKey, message: dict[str, Any], state: int) -> int:
        """Store one customer message on the path the dialogue decides; the session state after it."""
        settings = self._settings
        kind = str(message.get("msgtype") or "text")
        body = message.get(kind)
        text = printable(str(body.get("content", ""))).strip() if kind == "text" and isinstance(body, dict) else ""
        media_id = wx.media_id_of(body.get("media_id")) if kind == "voice" and isinstance(body, dict) else None
        sent = message.get("send_time")
        received = datetime.fromtimestamp(int(sent), UTC) if isinstance(sent, int) else utcnow()
        read = truncation.cut(text, settings.max_text_chars)
        text = read.text
        external_id = str(message["msgid"])
        if state in HUMAN_STATES:  # the person serving the customer hears a voice in their own client
            # the console's agents (the session never left Kefu) or the platform's servicers
            held_by: dict[str, Any] = {"via": "desk"} if self._handoff.desk_owns(key) else {"service_state": state}
            accepted = self._ingress.accept_for_human(Inbound(key, external_id, text or f"[{kind}]", kind, received,
                                                              media_id=media_id), **held_by)
            truncation.record(self._ingress, accepted, CHANNEL, read)
            return state
        said = Message(text, kind, media_id is not None, channel=key.channel)
        decision = decide(settings, said, self._handoff.availability(key.account))
        # a voice's text comes later, from the worker's transcription (which decides again)
        stored = text or ("" if decision.action is Action.GENERATE else f"[{kind}]")
        inbound = Inbound(key, external_id, stored, kind, received, media_id=media_id)
        if decision.action is Action.GENERATE:
            self._for_model(inbound, read)
            return state
        accepted, _ = store_decided(self._ingress, self._handoff, inbound, truncation.noted(decision, read))
        truncation.record(self._ingress, accepted, CHANNEL, read)
        return POOL if decision.action is Action.HAND_OFF else state  # after a hand-off: for the person taking over

    def _for_model(self, inbound: Inbound, read: truncation.Cut) -> None:
        """Queue a message for the model; one admission control refuses (the customer's limit, backpressure) is
        stored with the wait reply instead, delivered like any other."""
        refusal = admit(self._admission, inbound.key)
        if refusal is None:
            accepted = self._ingress.accept(inbound)  # the model's truncation note: when its answer is sent
        else:
            stored = inbound if inbound.text else replace(inbound, text=f"[{inbound.kind}]")  # an untranscribed voice
            accepted, _ = self._ingress.accept_answered(stored, refused_answer(self._admission, refusal), passive=False)
        truncation.record(self._ingress, accepted, CHANNEL, read)

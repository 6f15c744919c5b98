"""accept(): the one way a customer message enters Kefu.

One transaction inserts the conversation (if new), the inbound row and a ``received`` audit row;
``UNIQUE(channel, account, external_id)`` makes a platform retry a no-op that returns the first
message's id. With an ``intent`` function (models.intents.classify, rules only) the message's intent is
stored in the row and in the ``received`` audit row's detail. Only after the commit is
``handle_inbound(id)`` published, so a worker never sees an id that is not in the database. If publishing
fails the message is still safe: it stays ``received`` and the sweeper publishes it again (a retry of the same
message also does, at once). Each new message counts in ``kefu_messages_received_total``, and one answered here
(or left to a person) in ``kefu_messages_total`` (:mod:`models.infra.metrics`), after its commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from models import audit, desk
from models.envelope import ConversationKey, Inbound, utcnow
from models.infra import metrics
from models.infra.bus import Bus
from models.infra.db import insert_ignoring_conflict, transaction
from models.infra.queues import Publisher
from models.replies import Answer, store_reply
from models.states import WITH_PERSON, Handler, InboundStatus
from models.tables import ConversationRecord, InboundRecord, ReplyRecord

log = logging.getLogger(__name__)

REPUBLISH_AFTER_S = 10.0
StoredText = Callable[[str], tuple[str, tuple[str, ...]]]  # (text to store, moderation rules that masked words)
IntentOf = Callable[[str], str]  # the customer's text -> its intent label (models.intents.classify, no model)
HUMAN = "human"  # kefu_messages_total's outcome for a message a person answers (no reply of Kefu's)


@dataclass(frozen=True, slots=True)
class Accepted:
    inbound_id: int
    conversation_id: int
    duplicate: bool
    queued: bool


class Ingress:
    def __init__(self, sessions: sessionmaker[Session], publisher: Publisher, stored: StoredText | None = None,
                 intent: IntentOf | None = None, notify: Bus | None = None) -> None:
        self._sessions = sessions
        self._publisher = publisher
        self._notify = notify  # the agent console's live events (models.desk.TOPIC); None: nobody listens
        self._stored = stored  # what is stored of a customer's text (models.privacy.stored_text); None: as sent
        self._intent = intent  # the intent stored with a message that has text and audited with it; None: none

    def accept(self, inbound: Inbound) -> Accepted:
        key = inbound.key
        intent = self._intent_of(inbound)
        with transaction(self._sessions) as session:
            conversation_id, inbound_id, handler = self._insert_conversation(session, inbound, InboundStatus.RECEIVED,
                                                                             intent)
            duplicate = inbound_id is None
            if duplicate:
                inbound_id, conversation_id, status, received_at = session.execute(
                    select(InboundRecord.id, InboundRecord.conversation_id, InboundRecord.status,
                           InboundRecord.received_at).where(
                        InboundRecord.channel == key.channel,
                        InboundRecord.account == key.account,
                        InboundRecord.external_id == inbound.external_id,
                    )
                ).one()
            else:
                status, received_at = InboundStatus.RECEIVED, inbound.received_at
                if handler in WITH_PERSON:  # claimed a moment ago (the adapter's check raced it): the person's
                    status = InboundStatus.HUMAN
                    session.execute(update(InboundRecord).where(InboundRecord.id == inbound_id).values(status=status))
            audit.record(
                session,
                audit.DUPLICATE if duplicate else audit.RECEIVED,
                channel=key.channel,
                conversation_id=conversation_id,
                inbound_id=inbound_id,
                message_kind=inbound.kind,
                chars=len(inbound.text),
                **({} if duplicate else _intent_detail(intent)),
            )
            if status == InboundStatus.HUMAN and not duplicate:
                audit.record(session, audit.HUMAN_OWNED, channel=key.channel, conversation_id=conversation_id,
                             inbound_id=inbound_id, via="desk")
        assert inbound_id is not None
        if not duplicate:
            metrics.received(key.channel)
            self._tell(conversation_id, key.channel)
        if status == InboundStatus.HUMAN:
            return Accepted(inbound_id, conversation_id, duplicate, False)
        if status != InboundStatus.RECEIVED:
            return Accepted(inbound_id, conversation_id, duplicate, True)
        # A retry of a message whose publish failed earlier publishes it now; a retry racing the first
        # request's own publish (received a moment ago) leaves that to the first request.
        if duplicate and (utcnow() - received_at).total_seconds() <= REPUBLISH_AFTER_S:
            return Accepted(inbound_id, conversation_id, duplicate, False)
        return Accepted(inbound_id, conversation_id, duplicate, self._publish(inbound_id, conversation_id, key.channel))

    def accept_answered(self, inbound: Inbound, answer: Answer, *, passive: bool = True
                        ) -> tuple[Accepted, str | None]:
        """Persist a message answered on the spot (FAQ, welcome, unsupported type, hand-off notice) with its reply.

        One transaction: inbound, then :func:`~models.replies.store_reply`. ``passive``: the answer goes back in
        the callback's own response, so the delivery is already ``sent``; otherwise it is ``pending`` and
        ``deliver`` is published after the commit (the sweeper covers a failed publish). Returns the reply text
        to send, or for a platform retry of the same message the text first sent (None if it went to the model).
        """
        key = inbound.key
        intent = self._intent_of(inbound)
        with transaction(self._sessions) as session:
            conversation_id, inbound_id = self._insert(session, inbound, InboundStatus.ANSWERED, intent)
            if inbound_id is None:
                inbound_id, conversation_id = self._existing(session, inbound)
                earlier = session.scalars(select(ReplyRecord.text).where(ReplyRecord.inbound_id == inbound_id)).first()
                audit.record(session, audit.DUPLICATE, channel=key.channel, conversation_id=conversation_id,
                             inbound_id=inbound_id, message_kind=inbound.kind)
                return Accepted(inbound_id, conversation_id, True, True), earlier
            audit.record(session, audit.RECEIVED, channel=key.channel, conversation_id=conversation_id,
                         inbound_id=inbound_id, message_kind=inbound.kind, chars=len(inbound.text),
                         **_intent_detail(intent))
            reply_id = store_reply(session, inbound_id=inbound_id, conversation_id=conversation_id, channel=key.channel,
                                   answer=answer, passive=passive)
            assert reply_id is not None  # the inbound is new, so is its reply
        metrics.received(key.channel)
        metrics.answered(key.channel, intent, answer.source)
        self._tell(conversation_id, key.channel)
        if not passive:
            self.deliver(reply_id)
        return Accepted(inbound_id, conversation_id, False, True), answer.text

    def deliver(self, reply_id: int) -> None:
        """Publish ``deliver`` for a stored reply; a failed publish is left to the sweeper (the row is pending)."""
        try:
            self._publisher.deliver(reply_id)
        except Exception as exc:
            log.error("publish of delivery %s failed: %s", reply_id, type(exc).__name__)

    def accept_for_human(self, inbound: Inbound, **detail: Any) -> Accepted:
        """Persist a message that a person, not the model, will answer (the conversation is handed off)."""
        intent = self._intent_of(inbound)
        with transaction(self._sessions) as session:
            conversation_id, inbound_id = self._insert(session, inbound, InboundStatus.HUMAN, intent)
            duplicate = inbound_id is None
            if inbound_id is None:
                inbound_id, conversation_id = self._existing(session, inbound)
            ids: dict[str, Any] = {"channel": inbound.key.channel, "conversation_id": conversation_id,
                                   "inbound_id": inbound_id}
            if duplicate:
                audit.record(session, audit.DUPLICATE, **ids, message_kind=inbound.kind)
            else:
                audit.record(session, audit.RECEIVED, **ids, message_kind=inbound.kind, chars=len(inbound.text),
                             **_intent_detail(intent))
                audit.record(session, audit.HUMAN_OWNED, **ids, **detail)
        if not duplicate:
            metrics.received(inbound.key.channel)
            metrics.answered(inbound.key.channel, intent, HUMAN)
            self._tell(conversation_id, inbound.key.channel)
        return Accepted(inbound_id, conversation_id, duplicate, False)

    def note(self, accepted: Accepted, channel: str, kind: str, **detail: Any) -> None:
        """An audit event about an accepted message (e.g. the customer was told to wait)."""
        with transaction(self._sessions) as session:
            audit.record(session, kind, channel=channel, conversation_id=accepted.conversation_id,
                         inbound_id=accepted.inbound_id, **detail)

    def _intent_of(self, inbound: Inbound) -> str | None:
        """The message's intent by the rules (pure, in memory: no I/O before the platform's acknowledgement); None
        for a message without text (a voice gets its intent in the worker, once transcribed) or with only its kind's
        placeholder ("[image]")."""
        if self._intent is None or not inbound.text or inbound.text == f"[{inbound.kind}]":
            return None
        try:
            return self._intent(inbound.text)
        except Exception:  # an intent is worth less than the message: store it without one
            log.exception("intent classification failed")
            return None

    def _tell(self, conversation_id: int, channel: str) -> None:
        if self._notify is not None:
            self._notify.publish(desk.TOPIC, desk.event("message", conversation_id, channel=channel))

    def _insert(self, session: Session, inbound: Inbound, status: InboundStatus, intent: str | None = None
                ) -> tuple[int, int | None]:
        """(conversation id, new inbound id or None when the platform sent this message before)."""
        conversation_id, inbound_id, _ = self._insert_conversation(session, inbound, status, intent)
        return conversation_id, inbound_id

    def _insert_conversation(self, session: Session, inbound: Inbound, status: InboundStatus,
                             intent: str | None = None) -> tuple[int, int | None, str]:
        """(conversation id, new inbound id or None when the platform sent this message before, the conversation's
        handler). The conversation's inbox keys (last message time, intent) move with every message."""
        key = inbound.key
        text, masked_by = self._stored(inbound.text) if self._stored is not None else (inbound.text, ())
        conversation_id, handler = touch_conversation(session, key, utcnow(), intent)
        inbound_id = insert_ignoring_conflict(
            session, InboundRecord,
            {"conversation_id": conversation_id, "channel": key.channel, "account": key.account,
             "external_id": inbound.external_id, "kind": inbound.kind, "text": text,
             "status": status, "received_at": inbound.received_at, "media_id": inbound.media_id, "intent": intent},
            ["channel", "account", "external_id"],
        )
        for rule in masked_by if inbound_id is not None else ():
            audit.record(session, audit.MODERATED, channel=key.channel, conversation_id=conversation_id,
                         inbound_id=inbound_id, direction="in", action="mask", rule=rule)
        return conversation_id, inbound_id, handler

    @staticmethod
    def _existing(session: Session, inbound: Inbound) -> tuple[int, int]:
        key = inbound.key
        inbound_id, conversation_id = session.execute(
            select(InboundRecord.id, InboundRecord.conversation_id).where(
                InboundRecord.channel == key.channel, InboundRecord.account == key.account,
                InboundRecord.external_id == inbound.external_id)
        ).one()
        return int(inbound_id), int(conversation_id)

    def _publish(self, inbound_id: int, conversation_id: int, channel: str) -> bool:
        try:
            self._publisher.handle_inbound(inbound_id)
        except Exception as exc:  # broker down: the row is safe, the sweeper publishes it later
            log.error("publish of inbound %s failed: %s", inbound_id, type(exc).__name__)
            with transaction(self._sessions) as session:
                audit.record(
                    session,
                    audit.QUEUE_FAILED,
                    channel=channel,
                    conversation_id=conversation_id,
                    inbound_id=inbound_id,
                    reason=type(exc).__name__,
                )
            return False
        with transaction(self._sessions) as session:
            session.execute(
                update(InboundRecord)
                .where(InboundRecord.id == inbound_id, InboundRecord.status == InboundStatus.RECEIVED)
                .values(status=InboundStatus.QUEUED, queued_at=utcnow())
            )
            audit.record(
                session, audit.QUEUED, channel=channel, conversation_id=conversation_id, inbound_id=inbound_id
            )
        return True


def _intent_detail(intent: str | None) -> dict[str, Any]:
    """The ``received`` audit row's intent (left out when there is none, as for a voice not yet transcribed)."""
    return {} if intent is None else {"intent": intent}


@lru_cache(maxsize=4)
def _touch(dialect: str) -> Any:
    module: Any = {"postgresql": postgresql, "sqlite": sqlite}[dialect]
    table = ConversationRecord.__table__
    stmt = module.insert(table)
    return stmt.on_conflict_do_update(
        index_elements=["channel", "account", "peer"],
        set_={"last_inbound_at": stmt.excluded.last_inbound_at,
              "last_intent": func.coalesce(stmt.excluded.last_intent, table.c.last_intent)},
    ).returning(table.c.id, table.c.handler)


def touch_conversation(session: Session, key: ConversationKey, at: datetime, intent: str | None
                       ) -> tuple[int, str]:
    """Create the conversation or move its inbox keys (one statement); (its id, its handler)."""
    row = session.execute(_touch(session.get_bind().dialect.name), {
        "channel": key.channel, "account": key.account, "peer": key.peer, "created_at": at,
        "last_inbound_at": at, "last_intent": intent, "handler": Handler.BOT, "handoffs": 0}).one()
    return int(row[0]), str(row[1])

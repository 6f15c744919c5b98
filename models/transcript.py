"""Reading a conversation back out of the database: history, context turns, undelivered replies.

The database is the durable copy of every conversation; caches (the context store) and live
events (the bus) are rebuilt or replayed from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models import audit
from models.envelope import ConversationKey, Turn, utcnow
from models.states import NOT_CONFIRMED, DeliveryStatus
from models.tables import ConversationRecord, DeliveryRecord, InboundRecord, ReplyRecord


@dataclass(frozen=True, slots=True)
class Exchange:
    """One customer message and, when there is one, its reply."""

    inbound_id: int
    text: str
    received_at: datetime
    status: str
    reply_id: int | None
    reply_text: str | None
    replied_at: datetime | None
    delivery_status: str | None


def conversation_id(session: Session, key: ConversationKey) -> int | None:
    return session.scalars(
        select(ConversationRecord.id).where(
            ConversationRecord.channel == key.channel,
            ConversationRecord.account == key.account,
            ConversationRecord.peer == key.peer,
        )
    ).first()


def exchanges(
    session: Session, conv_id: int, *, limit: int, before_inbound_id: int | None = None
) -> list[Exchange]:
    """The last ``limit`` exchanges, oldest first."""
    stmt = (
        select(
            InboundRecord.id,
            InboundRecord.text,
            InboundRecord.received_at,
            InboundRecord.status,
            ReplyRecord.id,
            ReplyRecord.text,
            ReplyRecord.created_at,
            DeliveryRecord.status,
        )
        .outerjoin(ReplyRecord, ReplyRecord.inbound_id == InboundRecord.id)
        .outerjoin(DeliveryRecord, DeliveryRecord.reply_id == ReplyRecord.id)
        .where(InboundRecord.conversation_id == conv_id)
        .order_by(InboundRecord.id.desc())
        .limit(limit)
    )
    if before_inbound_id is not None:
        stmt = stmt.where(InboundRecord.id < before_inbound_id)
    rows = session.execute(stmt).all()
    return [Exchange(*row) for row in reversed(rows)]


def context_turns(session: Session, conv_id: int, before_inbound_id: int, limit: int) -> list[Turn]:
    """The last ``limit`` answered exchanges before an inbound, as alternating user/assistant turns."""
    turns: list[Turn] = []
    for ex in exchanges(session, conv_id, limit=limit * 2, before_inbound_id=before_inbound_id):
        if ex.reply_text is not None:
            turns += [Turn("user", ex.text), Turn("assistant", ex.reply_text)]
    return turns[-2 * limit :] if limit else []


def undelivered_replies(session: Session, key: ConversationKey, limit: int = 50) -> list[tuple[int, int, str]]:
    """(reply_id, inbound_id, text) of replies the customer has not confirmed, oldest first."""
    conv_id = conversation_id(session, key)
    if conv_id is None:
        return []
    rows = session.execute(
        select(ReplyRecord.id, ReplyRecord.inbound_id, ReplyRecord.text)
        .join(DeliveryRecord, DeliveryRecord.reply_id == ReplyRecord.id)
        .where(ReplyRecord.conversation_id == conv_id, DeliveryRecord.status.in_(NOT_CONFIRMED))
        .order_by(ReplyRecord.id)
        .limit(limit)
    ).all()
    return [(int(r[0]), int(r[1]), str(r[2])) for r in rows]


def mark_delivered(session: Session, key: ConversationKey, reply_id: int) -> bool:
    """Record that the customer's client confirmed a reply. True the first time, False after.

    Only replies of ``key``'s own conversation can be confirmed.
    """
    conv_id = conversation_id(session, key)
    if conv_id is None:
        return False
    owned = session.scalars(
        select(ReplyRecord.inbound_id).where(ReplyRecord.id == reply_id, ReplyRecord.conversation_id == conv_id)
    ).first()
    if owned is None:
        return False
    result = session.execute(
        update(DeliveryRecord)
        .where(DeliveryRecord.reply_id == reply_id, DeliveryRecord.status.in_(NOT_CONFIRMED))
        .values(status=DeliveryStatus.DELIVERED, updated_at=utcnow())
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    audit.record(
        session, audit.DELIVERED, channel=key.channel, conversation_id=conv_id, inbound_id=owned, reply_id=reply_id
    )
    return True

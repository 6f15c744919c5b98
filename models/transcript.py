"""Reading a conversation back out of the database: history, context turns, unconfirmed replies.

The database is the durable copy of every conversation; caches (the context store) and live
events (the bus) are rebuilt or replayed from here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update
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


@dataclass(frozen=True, slots=True)
class ReplyRow:
    """A reply to show on a live socket (web chat)."""

    reply_id: int
    message_id: int | None  # None for an agent's message (it answers no one message)
    text: str
    confirmed: bool  # the customer's client acked it (then it is shown once, never resent)


def unconfirmed_replies(session: Session, channel: str, account: str, peers: Sequence[str],
                        since: datetime | None = None, per_peer: int = 50) -> dict[str, list[ReplyRow]]:
    """Replies the customer has not confirmed (and, with ``since``, every reply created since then) of each
    peer's conversation, in message order: the newest ``per_peer`` × ``len(peers)`` in all, in one statement."""
    shown = DeliveryRecord.status.in_(NOT_CONFIRMED)
    stmt = (
        select(ConversationRecord.peer, ReplyRecord.id, ReplyRecord.inbound_id, ReplyRecord.text, DeliveryRecord.status)
        .join(ReplyRecord, ReplyRecord.conversation_id == ConversationRecord.id)
        .join(DeliveryRecord, DeliveryRecord.reply_id == ReplyRecord.id)
        .where(ConversationRecord.channel == channel, ConversationRecord.account == account,
               ConversationRecord.peer.in_(list(peers)),
               shown if since is None else or_(shown, ReplyRecord.created_at >= since))
        .order_by(ReplyRecord.id.desc())  # the newest, when there are more
        .limit(per_peer * len(peers))
    )
    out: dict[str, list[ReplyRow]] = defaultdict(list)
    for peer, reply_id, message_id, text, status in reversed(session.execute(stmt).all()):
        out[peer].append(ReplyRow(int(reply_id), None if message_id is None else int(message_id), str(text),
                                  status not in NOT_CONFIRMED))
    return out


def mark_delivered(session: Session, key: ConversationKey, reply_id: int) -> bool:
    """Record that the customer's client confirmed a reply. True the first time, False after.

    Only replies of ``key``'s own conversation can be confirmed.
    """
    conv_id = conversation_id(session, key)
    if conv_id is None:
        return False
    owned = session.execute(
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
        session, audit.DELIVERED, channel=key.channel, conversation_id=conv_id, inbound_id=owned.inbound_id,
        reply_id=reply_id
    )
    return True

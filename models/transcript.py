"""Reading a conversation back out of the database: history, context turns, unconfirmed replies.

The database is the durable copy of every conversation; caches (the context store) and live
events (the bus) are rebuilt or replayed from here.

Replies without a customer message (an agent's, from the console; the request for a satisfaction score) are
*loose* (:func:`loose_replies`): they are placed in time among the exchanges. The model's context
(:func:`context_turns`) includes what the customer said to a person and the agent's messages as the assistant's
turns, so that after a hand-back the model knows what the person said.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from models import audit
from models.envelope import ConversationKey, Turn, utcnow
from models.states import NOT_CONFIRMED, DeliveryStatus, InboundStatus, ReplySource
from models.tables import AgentRecord, AuditEvent, ConversationRecord, DeliveryRecord, InboundRecord, ReplyRecord


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
    reply_source: str | None = None


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
            ReplyRecord.source,
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


@dataclass(frozen=True, slots=True)
class LooseReply:
    """A reply to no one message: an agent's (``agent_name``), or the request for a satisfaction score."""

    reply_id: int
    text: str
    source: str
    agent_name: str | None
    created_at: datetime
    delivery_status: str | None


def loose_replies(session: Session, conv_id: int, *, since: datetime | None = None, before: Any = None,
                  sources: Sequence[str] | None = None, limit: int = 200) -> list[LooseReply]:
    """The conversation's last ``limit`` replies without a message, oldest first: created at or after ``since``
    and before ``before`` (a datetime or an SQL expression), of the given sources."""
    stmt = (
        select(ReplyRecord.id, ReplyRecord.text, ReplyRecord.source, AgentRecord.display_name, ReplyRecord.created_at,
               DeliveryRecord.status)
        .outerjoin(AgentRecord, AgentRecord.id == ReplyRecord.agent_id)
        .outerjoin(DeliveryRecord, DeliveryRecord.reply_id == ReplyRecord.id)
        .where(ReplyRecord.conversation_id == conv_id, ReplyRecord.inbound_id.is_(None))
        .order_by(ReplyRecord.id.desc())
        .limit(limit)
    )
    if since is not None:
        stmt = stmt.where(ReplyRecord.created_at >= since)
    if before is not None:
        stmt = stmt.where(ReplyRecord.created_at < before)
    if sources is not None:
        stmt = stmt.where(ReplyRecord.source.in_(list(sources)))
    return [LooseReply(int(r[0]), str(r[1]), str(r[2]), r[3], r[4], r[5]) for r in reversed(session.execute(stmt).all())]


def context_turns(session: Session, conv_id: int, before_inbound_id: int, limit: int) -> list[Turn]:
    """The last ``limit`` exchanges before an inbound, as user/assistant turns: messages the model (or a rule)
    answered with their answers, and messages a person read (``human``) with the agents' messages placed by time
    as the assistant's. Consecutive turns of one role are joined (the prompt alternates)."""
    if not limit:
        return []
    exs = exchanges(session, conv_id, limit=limit * 2, before_inbound_id=before_inbound_id)
    arrived = select(InboundRecord.received_at).where(InboundRecord.id == before_inbound_id).scalar_subquery()
    agents = loose_replies(session, conv_id, since=exs[0].received_at if exs else None, before=arrived,
                           sources=[ReplySource.AGENT], limit=limit * 2)
    timeline: list[tuple[datetime, int, Turn]] = []
    for ex in exs:
        if ex.reply_text is not None:
            timeline += [(ex.received_at, 0, Turn("user", ex.text)),
                         (ex.replied_at or ex.received_at, 1, Turn("assistant", ex.reply_text))]
        elif ex.status == InboundStatus.HUMAN and ex.text:
            timeline.append((ex.received_at, 0, Turn("user", ex.text)))
    timeline += [(r.created_at, 1, Turn("assistant", r.text)) for r in agents]
    timeline.sort(key=lambda item: (item[0], item[1]))
    turns: list[Turn] = []
    for _, _, turn in timeline:
        if turns and turns[-1].role == turn.role:
            turns[-1] = Turn(turn.role, f"{turns[-1].text}\n{turn.text}")
        else:
            turns.append(turn)
    while turns and turns[0].role != "user":  # a window starts with the customer
        turns.pop(0)
    return turns[-2 * limit :]


@dataclass(frozen=True, slots=True)
class ReplyRow:
    """A reply to show on a live socket (web chat)."""

    reply_id: int
    message_id: int | None  # None for an agent's message (it answers no one message)
    text: str
    confirmed: bool  # the customer's client acked it (then it is shown once, never resent)
    source: str = ReplySource.MODEL  # models.states.ReplySource: agent, csat, model, faq…
    agent_name: str | None = None  # the agent's display name, for an agent's message


def unconfirmed_replies(session: Session, channel: str, account: str, peers: Sequence[str],
                        since: datetime | None = None, per_peer: int = 50) -> dict[str, list[ReplyRow]]:
    """Replies the customer has not confirmed (and, with ``since``, every reply created since then) of each
    peer's conversation, in message order: the newest ``per_peer`` × ``len(peers)`` in all, in one statement."""
    shown = DeliveryRecord.status.in_(NOT_CONFIRMED)
    stmt = (
        select(ConversationRecord.peer, ReplyRecord.id, ReplyRecord.inbound_id, ReplyRecord.text, DeliveryRecord.status,
               ReplyRecord.source, AgentRecord.display_name)
        .join(ReplyRecord, ReplyRecord.conversation_id == ConversationRecord.id)
        .join(DeliveryRecord, DeliveryRecord.reply_id == ReplyRecord.id)
        .outerjoin(AgentRecord, AgentRecord.id == ReplyRecord.agent_id)
        .where(ConversationRecord.channel == channel, ConversationRecord.account == account,
               ConversationRecord.peer.in_(list(peers)),
               shown if since is None else or_(shown, ReplyRecord.created_at >= since))
        .order_by(ReplyRecord.id.desc())  # the newest, when there are more
        .limit(per_peer * len(peers))
    )
    out: dict[str, list[ReplyRow]] = defaultdict(list)
    for peer, reply_id, message_id, text, status, source, agent_name in reversed(session.execute(stmt).all()):
        out[peer].append(ReplyRow(int(reply_id), None if message_id is None else int(message_id), str(text),
                                  status not in NOT_CONFIRMED, str(source), agent_name))
    return out


# a generation that stopped before it was done: at max_tokens, or at the deadline (the engine's or the watchdog's)
CUT_FINISH_REASONS = frozenset({"length", "deadline", "deadline_missed"})


def cut(session: Session, message_ids: Sequence[int]) -> set[int]:
    """The messages among ``message_ids`` whose reply is the model's answer cut short (:data:`CUT_FINISH_REASONS`:
    the ``finish_reason`` of its ``generation_finished`` audit row)."""
    found = session.execute(
        select(AuditEvent.inbound_id, AuditEvent.detail)
        .join(ReplyRecord, ReplyRecord.inbound_id == AuditEvent.inbound_id)
        .where(AuditEvent.inbound_id.in_(list(message_ids)), AuditEvent.kind == audit.GENERATION_FINISHED,
               ReplyRecord.source == ReplySource.MODEL)
    ).all()
    return {int(inbound_id) for inbound_id, detail in found
            if isinstance(detail, dict) and detail.get("finish_reason") in CUT_FINISH_REASONS}


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

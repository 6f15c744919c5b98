"""The human desk: who answers a conversation (the bot, the waiting queue, an agent) and how that changes.

A conversation's ``handler`` (models.states.Handler) moves bot → waiting (the customer asked for a person and the
desk is open: :func:`queue`) → agent (:func:`claim`) → bot (:func:`hand_back`). An agent may also claim a
conversation straight from the bot (a take-over). Every change is one conditional ``UPDATE`` — two agents
clicking "claim" at once cannot both win, a hand-back by someone who does not hold the conversation changes
nothing — and is audited (``desk_queued``, ``desk_claimed``, ``desk_handed_back``) in the same transaction.

While the handler is not the bot, ingress stores the customer's messages as ``human`` and the model stays out
(:func:`with_person`). An agent's message is a reply without an inbound (:func:`store_agent_reply`), delivered
by the channel's own outbound like any other reply.

The desk is *open* (:func:`is_open`) when it is within business hours (models.business_hours) and at least one
agent is present: status online and a sign of life from their console within ``desk_presence_s``.

Live events for the console go on the bus topic :data:`TOPIC` (fire-and-forget; the console reloads what an
event names from the database, so a lost event costs only liveness).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models import audit
from models.envelope import ConversationKey, utcnow
from models.infra.db import upsert_returning_id
from models.states import WITH_PERSON, DeliveryStatus, Handler, Presence, ReplySource
from models.tables import AgentRecord, ConversationRecord, DeliveryRecord, ReplyRecord

TOPIC = "desk"  # the bus topic of the console's live events

DESK_QUEUED = "desk_queued"
DESK_CLAIMED = "desk_claimed"
DESK_HANDED_BACK = "desk_handed_back"


class DeskConflict(Exception):
    """The conversation is not in a state that allows this (another agent holds it, it was handed back…)."""


@dataclass(frozen=True, slots=True)
class Held:
    """Who answers one conversation now."""

    conversation_id: int
    handler: Handler
    agent_id: int | None


def event(kind: str, conversation_id: int, **detail: Any) -> dict[str, Any]:
    """A live event for the console: ``{"type": kind, "conversation_id": …, …}``."""
    return {"type": kind, "conversation_id": conversation_id, **detail}


def conversation_id_of(session: Session, key: ConversationKey) -> int | None:
    return session.scalars(select(ConversationRecord.id).where(
        ConversationRecord.channel == key.channel, ConversationRecord.account == key.account,
        ConversationRecord.peer == key.peer)).first()


def ensure_conversation(session: Session, key: ConversationKey) -> int:
    """The conversation's id, created if this is its first event."""
    return upsert_returning_id(session, ConversationRecord, {
        "channel": key.channel, "account": key.account, "peer": key.peer, "created_at": utcnow()},
        ["channel", "account", "peer"])


def with_person(session: Session, key: ConversationKey) -> bool:
    """Whether a person (the waiting queue or an agent) owns the conversation: the model stays out."""
    handler = session.scalars(select(ConversationRecord.handler).where(
        ConversationRecord.channel == key.channel, ConversationRecord.account == key.account,
        ConversationRecord.peer == key.peer)).first()
    return handler in WITH_PERSON


def agents_present(session: Session, presence_s: float, now: datetime | None = None) -> int:
    """Agents who take conversations now: online, not disabled, and seen within ``presence_s``."""
    since = (now or utcnow()) - timedelta(seconds=presence_s)
    return int(session.scalar(select(func.count()).select_from(AgentRecord).where(
        AgentRecord.status == Presence.ONLINE, AgentRecord.disabled.is_(False), AgentRecord.seen_at >= since)) or 0)


def queue(session: Session, conversation_id: int, channel: str, why: str) -> bool:
    """bot → waiting; False when a person already has it (nothing changes)."""
    done = session.execute(
        update(ConversationRecord)
        .where(ConversationRecord.id == conversation_id, ConversationRecord.handler == Handler.BOT)
        .values(handler=Handler.WAITING, agent_id=None, handler_since=utcnow(),
                handoffs=ConversationRecord.handoffs + 1)
    ).rowcount  # type: ignore[attr-defined]
    if done:
        audit.record(session, DESK_QUEUED, channel=channel, conversation_id=conversation_id, rule=why)
    return bool(done)


def claim(session: Session, conversation_id: int, agent_id: int) -> Held:
    """waiting or bot → agent (this agent). Claiming what one holds already is a no-op; what another agent holds
    raises DeskConflict."""
    now = utcnow()
    row = session.execute(select(ConversationRecord.handler, ConversationRecord.agent_id, ConversationRecord.channel)
                          .where(ConversationRecord.id == conversation_id)).first()
    if row is None:
        raise LookupError(f"no conversation {conversation_id}")
    if row.handler == Handler.AGENT and row.agent_id == agent_id:
        return Held(conversation_id, Handler.AGENT, agent_id)
    from_bot = row.handler == Handler.BOT
    done = session.execute(
        update(ConversationRecord)
        .where(ConversationRecord.id == conversation_id,
               ConversationRecord.handler.in_((Handler.BOT, Handler.WAITING)))
        .values(handler=Handler.AGENT, agent_id=agent_id, handler_since=now,
                handoffs=ConversationRecord.handoffs + (1 if from_bot else 0))
    ).rowcount  # type: ignore[attr-defined]
    if not done:
        raise DeskConflict("another agent has claimed this conversation")
    audit.record(session, DESK_CLAIMED, channel=row.channel, conversation_id=conversation_id, agent_id=agent_id,
                 previous=str(row.handler))
    return Held(conversation_id, Handler.AGENT, agent_id)


def hand_back(session: Session, conversation_id: int, agent_id: int | None, *, why: str = "agent") -> bool:
    """agent or waiting → bot. ``agent_id``: only if that agent holds it (None: whoever does — an admin, or the
    customer's channel ending the hand-off). False when nothing changed."""
    conditions = [ConversationRecord.id == conversation_id, ConversationRecord.handler.in_(WITH_PERSON)]
    if agent_id is not None:
        conditions.append(ConversationRecord.agent_id == agent_id)
    row = session.execute(select(ConversationRecord.channel, ConversationRecord.agent_id)
                          .where(*conditions)).first()
    if row is None:
        return False
    done = session.execute(update(ConversationRecord).where(*conditions)
                           .values(handler=Handler.BOT, agent_id=None, handler_since=utcnow())).rowcount  # type: ignore[attr-defined]
    if done:
        audit.record(session, DESK_HANDED_BACK, channel=row.channel, conversation_id=conversation_id,
                     agent_id=row.agent_id, by=agent_id, rule=why)
    return bool(done)


def store_agent_reply(session: Session, conversation_id: int, agent_id: int, text: str) -> int:
    """An agent's message to the customer: a reply (source ``agent``, no inbound) with a pending delivery; the
    caller publishes ``deliver`` after the commit. Only the agent who holds the conversation may write
    (DeskConflict otherwise)."""
    row = session.execute(select(ConversationRecord.channel, ConversationRecord.handler, ConversationRecord.agent_id)
                          .where(ConversationRecord.id == conversation_id).with_for_update()).first()
    if row is None:
        raise LookupError(f"no conversation {conversation_id}")
    if row.handler != Handler.AGENT or row.agent_id != agent_id:
        raise DeskConflict("claim the conversation before replying")
    now = utcnow()
    reply = ReplyRecord(inbound_id=None, conversation_id=conversation_id, text=text, source=ReplySource.AGENT,
                        agent_id=agent_id, created_at=now)
    session.add(reply)
    session.flush()
    session.add(DeliveryRecord(reply_id=reply.id, channel=row.channel, status=DeliveryStatus.PENDING))
    session.execute(update(ConversationRecord).where(ConversationRecord.id == conversation_id)
                    .values(last_reply_at=now))
    audit.record(session, audit.REPLY_STORED, channel=row.channel, conversation_id=conversation_id,
                 reply_id=reply.id, chars=len(text), source=str(ReplySource.AGENT), agent_id=agent_id)
    return int(reply.id)

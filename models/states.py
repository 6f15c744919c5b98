"""The states a message, a reply and a delivery move through, and where a reply came from.

``StrEnum``\\ s, so a value compares equal to the string stored in the database and can be passed
to SQL as it is. The columns stay ``String(16)``: adding a state needs no migration.
"""

from __future__ import annotations

from enum import StrEnum


class InboundStatus(StrEnum):
    """received → queued → answered; ``human`` when a person, not the model, answers it."""

    RECEIVED = "received"  # persisted; handle_inbound not (yet) published
    QUEUED = "queued"  # handle_inbound published
    ANSWERED = "answered"  # a reply is stored
    HUMAN = "human"  # a person owns the conversation; the model stays out


WAITING = (InboundStatus.RECEIVED, InboundStatus.QUEUED)  # not answered yet


class ReplySource(StrEnum):
    MODEL = "model"
    FALLBACK = "fallback"  # the model could not answer (failure, deadline, empty output)
    FAQ = "faq"
    APPROVED = "approved"  # an operator-approved model answer, given again to a matching question (no model)
    RULE = "rule"  # a fixed answer: unsupported message type, no person available, voice not understood
    WELCOME = "welcome"
    HANDOFF = "handoff"  # the notice that a person takes over
    AGENT = "agent"  # written by an agent in the console (reply.agent_id; no inbound_id)
    CSAT = "csat"  # the request for a satisfaction score, or the thanks for one


def reply_source(value: str) -> ReplySource | None:
    """The stored source as a ReplySource; None for one this version does not know (written by a newer Kefu)."""
    try:
        return ReplySource(value)
    except ValueError:
        return None


class DeliveryStatus(StrEnum):
    """pending → sending → sent → delivered (the customer's client confirmed it), or failed."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


UNFINISHED = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)  # the deliver task has work left
NOT_CONFIRMED = (*UNFINISHED, DeliveryStatus.SENT)  # the customer's client has not confirmed it (web chat resends)


class Handler(StrEnum):
    """Who answers a conversation now (conversation.handler): bot → waiting (a customer asked for a person and the
    console has agents) → agent (claimed) → bot again (handed back)."""

    BOT = "bot"
    WAITING = "waiting"  # in the console's waiting queue; the model stays out
    AGENT = "agent"  # an agent claimed it (conversation.agent_id); the model stays out


WITH_PERSON = (Handler.WAITING, Handler.AGENT)


class Role(StrEnum):
    """What a console account may do: an agent serves conversations; an admin also manages accounts, canned replies
    and the knowledge base."""

    ADMIN = "admin"
    AGENT = "agent"


class Presence(StrEnum):
    ONLINE = "online"  # takes conversations
    AWAY = "away"  # logged in, takes none
    OFFLINE = "offline"

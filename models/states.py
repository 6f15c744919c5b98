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

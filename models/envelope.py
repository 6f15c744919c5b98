"""Value objects that travel between channels and workers. Frozen, no I/O.

An adapter turns a platform callback into an :class:`Inbound`; ingress persists it. A worker
turns it into a :class:`Reply`. Channels and workers agree on nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from models.states import ReplySource

Role = Literal["system", "user", "assistant"]


def utcnow() -> datetime:
    return datetime.now(UTC)


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(text: str) -> str:
    """Text without C0 control characters (newline and tab kept).

    NUL cannot be stored by PostgreSQL, and no customer or platform wants the others; a model with
    poor weights does produce them.
    """
    return _CONTROL.sub("", text)


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Who talks to whom: a channel, the business account on it, and the customer (peer)."""

    channel: str
    account: str
    peer: str

    def topic(self) -> str:
        """The bus topic live events for this conversation are published on."""
        return f"{self.channel}:{self.account}:{self.peer}"


@dataclass(frozen=True, slots=True)
class Inbound:
    """One customer message, normalized. ``external_id`` is the platform's id (dedup key).

    A voice message the platform did not transcribe carries its ``media_id`` (the platform's
    temporary file) and an empty ``text`` until a worker transcribes it.
    """

    key: ConversationKey
    external_id: str
    text: str
    kind: str = "text"
    received_at: datetime = field(default_factory=utcnow)
    media_id: str | None = None


@dataclass(frozen=True, slots=True)
class Turn:
    """One message in a conversation's context window."""

    role: Role
    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one inbound, as a channel sends it."""

    reply_id: int
    inbound_id: int | None  # None for an agent's message from the console (it answers no one message)
    conversation_id: int
    key: ConversationKey
    text: str
    inbound_at: datetime | None = None  # when the customer wrote; platforms limit how late we may answer
    source: ReplySource = ReplySource.MODEL

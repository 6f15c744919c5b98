"""Private notes and tags on a conversation: what agents tell each other about it, and labels to find it by.

- A note (:func:`add_note`) is 1-:data:`MAX_NOTE_CHARS` characters written by one agent; it is stored in
  ``conversation_note`` only. Nothing here writes a reply, a delivery or a bus message a channel would carry: a
  note never reaches the customer.
- A tag is 1-:data:`MAX_TAG_CHARS` characters without spaces, slashes or control characters (``退款``, ``VIP``),
  stripped and at most once per conversation (the table's unique constraint: :func:`tag` twice is one row, the
  second call changes nothing and is not audited). :func:`untag` removes it. :func:`tag_counts` counts the
  conversations per tag; :func:`tagged` is the condition the inbox's query adds for its ``tag`` filter.
- Changes are audited in the caller's transaction (``console_note_added``: the note's id and length, never its
  text; ``console_tagged`` / ``console_untagged``: the tag); nothing here commits.

Raises :class:`UnknownConversation` (a ``LookupError``) for a conversation id that does not exist and
:class:`NoteError` (a ``ValueError``, a message for the agent) for an empty or too long note, an invalid tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models import audit
from models.envelope import utcnow
from models.tables import AgentRecord, ConversationNoteRecord, ConversationRecord, ConversationTagRecord

MAX_NOTE_CHARS = 4000
MAX_TAG_CHARS = 32

NOTE_ADDED = "console_note_added"
TAGGED = "console_tagged"
UNTAGGED = "console_untagged"


class NoteError(ValueError):
    """A note or tag that cannot be stored; the message says why, for the agent."""


class UnknownConversation(LookupError):
    """There is no conversation with that id."""


@dataclass(frozen=True, slots=True)
class Note:
    id: int
    conversation_id: int
    agent_id: int
    agent_name: str
    text: str
    created_at: datetime


def check_tag(tag: str) -> str:
    """``tag`` stripped, if it is a valid tag; NoteError otherwise."""
    tag = tag.strip()
    if not tag or len(tag) > MAX_TAG_CHARS or any(c.isspace() or c in "/\\?#%" or not c.isprintable() for c in tag):
        raise NoteError(f"标签须为 1-{MAX_TAG_CHARS} 个字符，不含空格、/、\\、?、#、%")
    return tag


def _require(session: Session, conversation_id: int) -> None:
    if session.scalar(select(ConversationRecord.id).where(ConversationRecord.id == conversation_id)) is None:
        raise UnknownConversation(f"no conversation #{conversation_id}")


def notes(session: Session, conversation_id: int) -> list[Note]:
    """The conversation's notes, oldest first, with their authors' display names."""
    _require(session, conversation_id)
    rows = session.execute(select(ConversationNoteRecord, AgentRecord.display_name)
                           .join(AgentRecord, AgentRecord.id == ConversationNoteRecord.agent_id)
                           .where(ConversationNoteRecord.conversation_id == conversation_id)
                           .order_by(ConversationNoteRecord.id)).all()
    return [Note(n.id, n.conversation_id, n.agent_id, name, n.text, n.created_at) for n, name in rows]


def add_note(session: Session, conversation_id: int, text: str, agent_id: int, username: str) -> Note:
    """Store a note by agent ``agent_id`` on the conversation."""
    text = text.strip()
    if not text or len(text) > MAX_NOTE_CHARS:
        raise NoteError(f"备注须为 1-{MAX_NOTE_CHARS} 个字符")
    _require(session, conversation_id)
    note = ConversationNoteRecord(conversation_id=conversation_id, agent_id=agent_id, text=text, created_at=utcnow())
    session.add(note)
    session.flush()
    audit.record(session, NOTE_ADDED, conversation_id=conversation_id, note_id=note.id, chars=len(text),
                 agent_id=agent_id, by=username)
    name = session.scalar(select(AgentRecord.display_name).where(AgentRecord.id == agent_id)) or username
    return Note(note.id, conversation_id, agent_id, name, text, note.created_at)


def tags(session: Session, conversation_id: int) -> list[str]:
    """The conversation's tags, in the order they were added."""
    _require(session, conversation_id)
    return list(session.scalars(select(ConversationTagRecord.tag)
                                .where(ConversationTagRecord.conversation_id == conversation_id)
                                .order_by(ConversationTagRecord.id)))


def tag(session: Session, conversation_id: int, name: str, agent_id: int | None, username: str) -> bool:
    """Put tag ``name`` on the conversation; False when it was there already (nothing changes)."""
    name = check_tag(name)
    _require(session, conversation_id)
    dialect: Any = {"postgresql": postgresql, "sqlite": sqlite}[session.get_bind().dialect.name]
    added = session.scalar(dialect.insert(ConversationTagRecord)
                           .values(conversation_id=conversation_id, tag=name, agent_id=agent_id, created_at=utcnow())
                           .on_conflict_do_nothing(index_elements=["conversation_id", "tag"])
                           .returning(ConversationTagRecord.id))
    if added is None:
        return False
    audit.record(session, TAGGED, conversation_id=conversation_id, tag=name, agent_id=agent_id, by=username)
    return True


def untag(session: Session, conversation_id: int, name: str, agent_id: int | None, username: str) -> bool:
    """Remove tag ``name`` from the conversation; False when it did not have it."""
    name = name.strip()
    _require(session, conversation_id)
    removed = session.scalar(sql_delete(ConversationTagRecord)
                             .where(ConversationTagRecord.conversation_id == conversation_id,
                                    ConversationTagRecord.tag == name)
                             .returning(ConversationTagRecord.id))
    if removed is None:
        return False
    audit.record(session, UNTAGGED, conversation_id=conversation_id, tag=name, agent_id=agent_id, by=username)
    return True


def tag_counts(session: Session) -> list[tuple[str, int]]:
    """Every tag in use with the number of conversations that have it, most used first."""
    count = func.count().label("n")
    rows = session.execute(select(ConversationTagRecord.tag, count).group_by(ConversationTagRecord.tag)
                           .order_by(count.desc(), ConversationTagRecord.tag)).all()
    return [(t, int(n)) for t, n in rows]


def tagged(name: str) -> ColumnElement[bool]:
    """The inbox's condition for conversations with tag ``name`` (``ix_conversation_tag_tag`` finds them)."""
    return ConversationRecord.id.in_(select(ConversationTagRecord.conversation_id)
                                     .where(ConversationTagRecord.tag == name.strip()))

"""The console's inbox: conversations on every channel, newest customer message first, one page at a time.

Keyset pagination on ``(last_inbound_at, id)`` descending — a page costs the same on the first page as on the
thousandth, and with 100,000 conversations the database walks one of the ``ix_conversation_*`` indexes
(``recent``, ``handler_recent``, ``channel_recent``, ``agent``: whichever the filter names) instead of sorting the
table. A conversation with no customer message yet (``last_inbound_at`` NULL) is not in the inbox. The cursor is
opaque to clients (``<microseconds>.<id>`` of the page's last row); a malformed one raises :class:`BadCursor`.

Each row carries what the list shows: the channel and account, a masked short label of the customer
(:func:`peer_label`: never the raw openid or phone number), who handles it (and the agent's display name), the
latest customer message (its first :data:`PREVIEW_CHARS` characters), the last intent, whether it is unanswered
(no reply since the last customer message) and since when it waits in the queue. Reads only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from models import notes, pii
from models.states import Handler
from models.tables import AgentRecord, ConversationRecord, InboundRecord

PREVIEW_CHARS = 80
MAX_LIMIT = 100


class BadCursor(ValueError):
    """The ``before`` cursor is not one this inbox handed out."""


@dataclass(frozen=True)
class Filters:
    channel: str | None = None
    handler: Handler | None = None
    intent: str | None = None
    unanswered: bool = False
    mine: int | None = None  # this agent's conversations
    tag: str | None = None  # conversations with this tag (models.notes)


@dataclass(frozen=True)
class Row:
    id: int
    channel: str
    account: str
    peer: str  # masked, short
    handler: str
    agent_id: int | None
    agent_name: str | None
    preview: str
    last_intent: str | None
    unanswered: bool
    last_inbound_at: str | None
    waiting_since: str | None
    handoffs: int

    def json(self) -> dict[str, Any]:
        return asdict(self)


def peer_label(peer: str) -> str:
    """A short, masked label for a customer: phone numbers and other personal data masked (models.pii), long ids
    cut to their first and last four characters."""
    masked = pii.mask(peer)
    return masked if len(masked) <= 12 else f"{masked[:4]}…{masked[-4:]}"


def cursor_of(at: datetime, conversation_id: int) -> str:
    return f"{int(at.timestamp() * 1_000_000)}.{conversation_id}"


def parse_cursor(cursor: str) -> tuple[datetime, int]:
    micros, _, id_ = cursor.partition(".")
    if not (micros.isdigit() and id_.isdigit()):
        raise BadCursor("before: not a cursor of this inbox")
    return datetime.fromtimestamp(int(micros) / 1_000_000, UTC), int(id_)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat(timespec="microseconds")


def _conditions(filters: Filters) -> list[ColumnElement[bool]]:
    c = ConversationRecord
    where: list[ColumnElement[bool]] = [c.last_inbound_at.is_not(None)]
    if filters.channel:
        where.append(c.channel == filters.channel)
    if filters.handler is not None:
        where.append(c.handler == filters.handler)
    if filters.mine is not None:
        where.append(c.agent_id == filters.mine)
    if filters.intent:
        where.append(c.last_intent == filters.intent)
    if filters.unanswered:
        where.append(or_(c.last_reply_at.is_(None), c.last_reply_at < c.last_inbound_at))
    if filters.tag:
        where.append(notes.tagged(filters.tag))
    return where


def _rows_query() -> Any:
    c = ConversationRecord
    preview = (select(func.substr(InboundRecord.text, 1, PREVIEW_CHARS))
               .where(InboundRecord.conversation_id == c.id)
               .order_by(InboundRecord.id.desc()).limit(1).correlate(c).scalar_subquery())
    return (select(c.id, c.channel, c.account, c.peer, c.handler, c.agent_id, c.handler_since, c.handoffs,
                   c.last_inbound_at, c.last_reply_at, c.last_intent, AgentRecord.display_name,
                   preview.label("preview"))
            .outerjoin(AgentRecord, AgentRecord.id == c.agent_id))


def _row(r: Any) -> Row:
    last_in = r.last_inbound_at
    unanswered = last_in is not None and (r.last_reply_at is None or r.last_reply_at < last_in)
    return Row(r.id, r.channel, r.account, peer_label(r.peer), r.handler, r.agent_id, r.display_name,
               r.preview or "", r.last_intent, unanswered, _iso(last_in),
               _iso(r.handler_since) if r.handler == Handler.WAITING else None, r.handoffs)


def page_query(filters: Filters, before: str | None, limit: int) -> Any:
    """The statement of one page (``limit`` rows); BadCursor for a malformed ``before``."""
    c = ConversationRecord
    where = _conditions(filters)
    if before:
        at, id_ = parse_cursor(before)
        # the first term is a range the index walks; the second breaks ties of equal times
        where += [c.last_inbound_at <= at, or_(c.last_inbound_at < at, and_(c.last_inbound_at == at, c.id < id_))]
    return _rows_query().where(*where).order_by(c.last_inbound_at.desc(), c.id.desc()).limit(limit)


def page(session: Session, filters: Filters, before: str | None = None,
         limit: int = 50) -> tuple[list[Row], str | None]:
    """One page of the inbox, and the cursor of the next (None: this was the last)."""
    limit = max(1, min(limit, MAX_LIMIT))
    rows = session.execute(page_query(filters, before, limit + 1)).all()
    found = [_row(r) for r in rows[:limit]]
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return found, (cursor_of(last.last_inbound_at, last.id) if last is not None else None)


def one(session: Session, conversation_id: int) -> Row | None:
    """One conversation's inbox row (the live update of one row); None when unknown."""
    r = session.execute(_rows_query().where(ConversationRecord.id == conversation_id)).first()
    return None if r is None else _row(r)


def waiting(session: Session) -> int:
    """How many conversations wait in the queue."""
    return int(session.scalar(select(func.count()).select_from(ConversationRecord)
                              .where(ConversationRecord.handler == Handler.WAITING)) or 0)

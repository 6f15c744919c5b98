"""Canned replies: prepared answers an agent inserts in the console's composer by typing ``/`` and a shortcut.

- A shortcut is 1-:data:`MAX_SHORTCUT_CHARS` characters of ``a-z``, ``0-9``, ``_``, ``-`` or Chinese (CJK unified
  ideographs), e.g. ``refund`` or ``退款``; the text is 1-:data:`MAX_TEXT_CHARS` characters.
- :func:`save` creates the reply under its shortcut or replaces the text of the one already there (one
  ``INSERT … ON CONFLICT`` on the unique shortcut: two admins saving at once leave one row, the later text);
  :func:`delete` removes it. Both are audited (``console_canned_saved``, ``console_canned_deleted``: the shortcut,
  the id and who, never the text) in the caller's transaction; nothing here commits.

Raises :class:`CannedError` (a ``ValueError``) with a message for the operator: a bad shortcut, an empty or too
long text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models import audit
from models.envelope import utcnow
from models.tables import CannedReplyRecord

MAX_SHORTCUT_CHARS = 32
MAX_TEXT_CHARS = 2000
SHORTCUT = re.compile(r"[a-z0-9_\-\u4e00-\u9fff]{1,32}")  # MAX_SHORTCUT_CHARS

SAVED = "console_canned_saved"
DELETED = "console_canned_deleted"


class CannedError(ValueError):
    """A canned reply that cannot be saved; the message says why."""


@dataclass(frozen=True, slots=True)
class CannedReply:
    id: int
    shortcut: str
    text: str
    created_by: int | None
    created_at: datetime


def check_shortcut(shortcut: str) -> str:
    """``shortcut`` if it is a valid one; CannedError otherwise."""
    if not SHORTCUT.fullmatch(shortcut):
        raise CannedError(f"快捷词须为 1-{MAX_SHORTCUT_CHARS} 个小写字母、数字、_、- 或汉字")
    return shortcut


def check_text(text: str) -> str:
    """``text`` stripped, if it is 1-MAX_TEXT_CHARS characters; CannedError otherwise."""
    text = text.strip()
    if not text or len(text) > MAX_TEXT_CHARS:
        raise CannedError(f"回复内容须为 1-{MAX_TEXT_CHARS} 个字符")
    return text


def replies(session: Session) -> list[CannedReply]:
    """Every canned reply, by shortcut."""
    return [_reply(r) for r in session.scalars(select(CannedReplyRecord).order_by(CannedReplyRecord.shortcut))]


def save(session: Session, shortcut: str, text: str, agent_id: int | None, username: str) -> tuple[bool, CannedReply]:
    """Create the canned reply ``shortcut`` or replace its text; (whether it is new, the reply)."""
    shortcut, text = check_shortcut(shortcut), check_text(text)
    existed = session.scalar(select(CannedReplyRecord.id).where(CannedReplyRecord.shortcut == shortcut)) is not None
    dialect: Any = {"postgresql": postgresql, "sqlite": sqlite}[session.get_bind().dialect.name]
    insert = dialect.insert(CannedReplyRecord).values(shortcut=shortcut, text=text, created_by=agent_id,
                                                       created_at=utcnow())
    reply_id = int(session.execute(insert.on_conflict_do_update(index_elements=["shortcut"],
                                                                set_={"text": insert.excluded.text})
                                   .returning(CannedReplyRecord.id)).scalar_one())
    audit.record(session, SAVED, canned_id=reply_id, shortcut=shortcut, agent_id=agent_id, by=username,
                 status="updated" if existed else "new")
    record = session.get(CannedReplyRecord, reply_id, populate_existing=True)
    assert record is not None
    return not existed, _reply(record)


def delete(session: Session, shortcut: str, agent_id: int | None, username: str) -> bool:
    """Remove the canned reply ``shortcut``; False when there was none."""
    reply_id = session.scalar(sql_delete(CannedReplyRecord).where(CannedReplyRecord.shortcut == shortcut)
                              .returning(CannedReplyRecord.id))
    if reply_id is None:
        return False
    audit.record(session, DELETED, canned_id=reply_id, shortcut=shortcut, agent_id=agent_id, by=username)
    return True


def _reply(r: CannedReplyRecord) -> CannedReply:
    return CannedReply(r.id, r.shortcut, r.text, r.created_by, r.created_at)

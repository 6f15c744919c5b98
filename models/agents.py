"""Console accounts: the people who log into the agent console (models.tables.AgentRecord).

Passwords are hashed with argon2id (argon2-cffi's ``PasswordHasher`` and its current parameters); a hash made
with other parameters is replaced on the next successful :func:`verify`. A password shorter than
:data:`MIN_PASSWORD_CHARS` is refused. Adding, disabling an account and changing a password are audited
(``console_user_added``, ``console_user_disabled``, ``console_password_changed``: ids, usernames and roles, never
a password); disabling an account or changing its password ends its console sessions.

Raises :class:`AccountError` (a ``ValueError``) with a message for the operator: a bad username, a short
password, a username taken, an unknown account.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from models import audit
from models.envelope import utcnow
from models.states import Presence, Role
from models.tables import AgentRecord, AgentSessionRecord

MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; a megabyte "password" is only a way to burn CPU
USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

USER_ADDED = "console_user_added"
USER_DISABLED = "console_user_disabled"
PASSWORD_CHANGED = "console_password_changed"  # noqa: S105 - an audit kind, not a password

_hasher = PasswordHasher()  # argon2id with the library's current (RFC 9106 low-memory) parameters
# verified against when the username is unknown, so that a missing account costs the same time as a wrong password
_DUMMY_HASH = _hasher.hash("kefu-no-such-account")


class AccountError(ValueError):
    """An account operation that cannot be done; the message says why, for the operator."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    username: str
    display_name: str
    role: Role
    disabled: bool
    status: str
    seen_at: datetime | None
    created_at: datetime


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"the password must have at most {MAX_PASSWORD_CHARS} characters")


def check_username(username: str) -> None:
    if not USERNAME.fullmatch(username):
        raise AccountError("a username is 1-64 characters: letters, digits and _ . @ - (starting with a letter or "
                           "digit)")


def add(session: Session, username: str, password: str, role: Role, display_name: str | None = None, *,
        by: str = "cli") -> int:
    """A new account (its id). AccountError: bad username or password, or the username is taken."""
    check_username(username)
    check_password(password)
    name = (display_name or username).strip()[:64] or username
    if session.scalars(select(AgentRecord.id).where(AgentRecord.username == username)).first() is not None:
        raise AccountError(f"the username {username!r} is taken")
    record = AgentRecord(username=username, display_name=name, role=Role(role), password_hash=_hasher.hash(password),
                         disabled=False, status=Presence.OFFLINE, created_at=utcnow())
    session.add(record)
    session.flush()
    audit.record(session, USER_ADDED, agent_id=record.id, username=username, role=str(role), by=by)
    return int(record.id)


def accounts(session: Session) -> list[Account]:
    rows = session.scalars(select(AgentRecord).order_by(AgentRecord.id)).all()
    return [Account(r.id, r.username, r.display_name, Role(r.role), r.disabled, r.status, r.seen_at, r.created_at)
            for r in rows]


def _existing(session: Session, username: str) -> AgentRecord:
    record = session.scalars(select(AgentRecord).where(AgentRecord.username == username)).first()
    if record is None:
        raise AccountError(f"no account {username!r}")
    return record


def disable(session: Session, username: str, *, by: str = "cli") -> bool:
    """Disable an account and end its sessions; False when it was disabled already."""
    record = _existing(session, username)
    if record.disabled:
        return False
    record.disabled = True
    record.status = Presence.OFFLINE
    session.execute(delete(AgentSessionRecord).where(AgentSessionRecord.agent_id == record.id))
    audit.record(session, USER_DISABLED, agent_id=record.id, username=username, by=by)
    return True


def set_password(session: Session, username: str, password: str, *, by: str = "cli") -> None:
    """A new password; the account's sessions end (whoever knew the old one is logged out)."""
    check_password(password)
    record = _existing(session, username)
    record.password_hash = _hasher.hash(password)
    session.execute(delete(AgentSessionRecord).where(AgentSessionRecord.agent_id == record.id))
    audit.record(session, PASSWORD_CHANGED, agent_id=record.id, username=username, by=by)


def verify(session: Session, username: str, password: str) -> AgentRecord | None:
    """The enabled account these credentials open, or None (unknown, disabled, wrong password: not told apart).
    A hash made with older argon2 parameters is replaced (in the caller's transaction)."""
    record = session.scalars(select(AgentRecord).where(AgentRecord.username == username)).first()
    if record is None or len(password) > MAX_PASSWORD_CHARS:
        _matches(_DUMMY_HASH, password[:MAX_PASSWORD_CHARS])
        return None
    if not _matches(record.password_hash, password) or record.disabled:
        return None
    if _hasher.check_needs_rehash(record.password_hash):
        session.execute(update(AgentRecord).where(AgentRecord.id == record.id)
                        .values(password_hash=_hasher.hash(password)))
    return record


def _matches(hash_: str, password: str) -> bool:
    try:
        return _hasher.verify(hash_, password)
    except (VerificationError, InvalidHashError):
        return False

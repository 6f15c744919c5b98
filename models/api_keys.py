"""Keys for the OpenAI/Ollama-compatible API (channels/api): made, listed, revoked, and checked.

A key is ``kefu-`` and 32 random URL-safe bytes; only its SHA-256 is stored (a high-entropy secret needs no slow
hash: nobody can guess one from its digest), with its first characters (``prefix``) so an operator can tell keys
apart. The plaintext is shown once, by :func:`add`. A key's ``name`` is the API channel's account: its
conversations, audit rows and rate limits go by it. Revoking keeps the row (the audit names it); a revoked key
is refused from then on (the gateway's cache of checked keys holds an answer for :data:`CHECK_TTL_S` at most).

Raises :class:`ApiKeyError` (a ValueError) with a message for the operator: a bad or taken name, an unknown key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from models import audit
from models.envelope import utcnow
from models.tables import ApiKeyRecord

KEY_PREFIX = "kefu-"
SHOWN_CHARS = 12  # of the key, kept as its prefix (``kefu-`` and 7 random characters)
CHECK_TTL_S = 5.0  # a gateway remembers a checked key this long (a revoked key works at most this much longer)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ApiKeyError(ValueError):
    """A key operation that cannot be done (the message says why)."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def add(session: Session, name: str) -> str:
    """A new key called ``name``; the plaintext, which is never stored or shown again."""
    if not _NAME.fullmatch(name):
        raise ApiKeyError(f"key name {name!r} must be 1-64 letters, digits, '.', '-' or '_'")
    if session.scalar(select(ApiKeyRecord.id).where(ApiKeyRecord.name == name)) is not None:
        raise ApiKeyError(f"a key named {name!r} exists already (names stay taken after revoke, for the audit)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKeyRecord(name=name, prefix=key[:SHOWN_CHARS], key_hash=digest(key)))
    try:
        session.flush()
    except IntegrityError:
        raise ApiKeyError(f"a key named {name!r} exists already") from None
    audit.record(session, audit.API_KEY_ADDED, channel="api", name=name, prefix=key[:SHOWN_CHARS])
    return key


def revoke(session: Session, name: str) -> None:
    row = session.scalar(select(ApiKeyRecord).where(ApiKeyRecord.name == name))
    if row is None:
        raise ApiKeyError(f"no key is named {name!r} (kefu apikey list shows them)")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, audit.API_KEY_REVOKED, channel="api", name=name, prefix=row.prefix)


def listing(session: Session) -> list[ApiKey]:
    rows = session.scalars(select(ApiKeyRecord).order_by(ApiKeyRecord.id))
    return [ApiKey(r.name, r.prefix, r.created_at, r.revoked_at, r.last_used_at) for r in rows]


class KeyCheck:
    """The gateway's check of a bearer key: the key's name, or None. Answers (a miss too) are remembered for
    ``ttl_s``, so a request costs no database read most of the time; ``last_used_at`` is written at most once
    per ``ttl_s`` per key."""

    def __init__(self, sessions: sessionmaker[Session], ttl_s: float = CHECK_TTL_S, max_entries: int = 10_000) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._max = max_entries
        self._known: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def name_of(self, key: str) -> str | None:
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        hashed = digest(key)
        now = time.monotonic()
        with self._lock:
            known = self._known.get(hashed)
        if known is not None and now - known[0] < self._ttl_s:
            return known[1]
        name = self._read(hashed)
        with self._lock:
            if len(self._known) >= self._max:
                self._known.clear()  # a flood of wrong keys must not grow memory; the good ones are read again
            self._known[hashed] = (now, name)
        return name

    def _read(self, hashed: str) -> str | None:
        with self._sessions() as session, session.begin():
            row = session.execute(select(ApiKeyRecord.id, ApiKeyRecord.name).where(
                ApiKeyRecord.key_hash == hashed, ApiKeyRecord.revoked_at.is_(None))).first()
            if row is None:
                return None
            session.execute(update(ApiKeyRecord).where(ApiKeyRecord.id == row.id).values(last_used_at=utcnow()))
            return str(row.name)

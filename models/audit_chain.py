"""The audit log's hash chain: the canonical text of a row and its hash (pure functions, no I/O).

Every ``audit_event`` row sits at position ``seq`` (1, 2, …) of one of a few chains and carries
``prev_hash`` (the ``hash`` of the row before it in that chain, :data:`GENESIS` for the first) and
``hash = sha256(canonical text)`` in lower-case hex. The canonical text (format ``v1``, frozen: a
change needs a new version, or every stored hash stops verifying) is::

    v1|<prev_hash>|<id>|<chain>|<seq>|<at>|<kind>|<channel>|<conversation_id>|<inbound_id>|<reply_id>|<detail>

where each field after ``v1`` is ``-`` for NULL or ``<length in characters>:<text>`` (so no choice
of values can shift text from one field into another), ``at`` is UTC with microseconds
(``2026-12-02T12:48:40.123456Z``) and ``detail`` is the JSON text exactly as stored (PostgreSQL
``json``, not ``jsonb``: its text is kept byte for byte). PostgreSQL computes it in a trigger
(``kefu_audit_hash()``, migration 0005); :func:`row_hash` computes the same text in Python, for
SQLite's writer and for ``kefu audit verify``, which must not trust the database's arithmetic.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

GENESIS = "0" * 64  # prev_hash of the first row of every chain
CHAINS_POSTGRESQL = 16  # chains on PostgreSQL: a transaction appends to chain txid % 16 (docs/audit.md)
CHAIN_SQLITE = 0  # SQLite has one writer at a time: one chain


def at_text(at: datetime) -> str:
    """``at`` as the canonical text: UTC, microseconds, ``Z`` (PostgreSQL: ``to_char(at AT TIME ZONE 'UTC', …)``)."""
    if at.tzinfo is None:
        raise ValueError("naive datetime in the audit chain")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _field(value: object) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else str(value)
    return f"{len(text)}:{text}"


def canonical(prev_hash: str, id: int, chain: int, seq: int, at: datetime, kind: str, channel: str | None,
              conversation_id: int | None, inbound_id: int | None, reply_id: int | None, detail: str) -> str:
    """The text a row's hash is computed over (module docstring); ``detail`` is the stored JSON text."""
    fields = (prev_hash, id, chain, seq, at_text(at), kind, channel, conversation_id, inbound_id, reply_id, detail)
    return "v1|" + "|".join(_field(value) for value in fields)


def row_hash(prev_hash: str, id: int, chain: int, seq: int, at: datetime, kind: str, channel: str | None,
             conversation_id: int | None, inbound_id: int | None, reply_id: int | None, detail: str) -> str:
    """sha256 of :func:`canonical`, lower-case hex."""
    text = canonical(prev_hash, id, chain, seq, at, kind, channel, conversation_id, inbound_id, reply_id, detail)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

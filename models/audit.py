"""The audit log's vocabulary and its one writer.

Rows are only ever inserted (the database rejects UPDATE/DELETE on ``audit_event``). Details hold
ids, sizes, timings and reasons, never message text or customer identifiers in the clear.

Every row is hash-chained (``models.audit_chain``, docs/audit.md): on PostgreSQL the database's
trigger computes the chain columns from the row as inserted; on SQLite :func:`record` computes them
here, in the caller's transaction, after locking the chain's head row. Either way the hash covers
``detail`` as finally stored, so anything done to ``detail`` before the INSERT (masking) is hashed.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, cast

from sqlalchemy import String, Table, bindparam, insert, text, type_coerce
from sqlalchemy.orm import Session

from models import pii
from models.audit_chain import CHAIN_SQLITE, row_hash
from models.envelope import utcnow
from models.tables import AuditEvent

RECEIVED = "received"  # inbound persisted
DUPLICATE = "duplicate"  # a platform retry of an inbound we already have
QUEUED = "queued"  # handle_inbound published
QUEUE_FAILED = "queue_failed"  # publish failed; the sweeper will publish again
REQUEUED = "requeued"  # the sweeper published a stale inbound or delivery again
GENERATION_STARTED = "generation_started"
GENERATION_FINISHED = "generation_finished"  # model, prompt/completion tokens, latency
GENERATION_FAILED = "generation_failed"  # reason; a fallback reply is stored instead
REPLY_STORED = "reply_stored"
DISPATCHED = "dispatched"  # handed to the channel (platform API accepted it / published to gateways)
DELIVERED = "delivered"  # the customer's client confirmed it
DELIVERY_RETRY = "delivery_retry"  # a transient failure; retried with backoff
DELIVERY_FAILED = "delivery_failed"  # a permanent failure, with reason
BUSY_NOTICE = "busy_notice"  # the model's queue was long: the customer was told to wait (estimate in seconds)
BARGE_IN = "barge_in"  # a caller spoke over the spoken answer: audio cleared, generation stopped, heard_chars kept
HANDED_OFF = "handed_off"  # the conversation was moved to a human (WeChat Customer Service), with the new state
HUMAN_OWNED = "human_owned"  # a message arrived while a human owns the conversation; the model stays out
TRANSCRIBED = "transcribed"  # a voice message became text: format, duration_ms, chars, latency_ms (never the text)
TRANSCRIPTION_RETRY = "transcription_retry"  # downloading the voice failed transiently; retried with backoff
TRANSCRIPTION_FAILED = "transcription_failed"  # no text from a voice message (reason); the customer is asked to repeat
MODERATED = "moderated"  # a moderation rule acted (direction in/out, action, rule id); never the text
KB_IMPORTED = "kb_imported"  # a knowledge-base document stored: document id, version, counts, content hash
KB_DELETED = "kb_deleted"  # a knowledge-base document removed: document id, version, counts
KB_FAQ_EDITED = "kb_faq_edited"  # one FAQ entry of a document edited in place: document and entry ids, version, by
KB_FAQ_ADDED = "kb_faq_added"  # one FAQ entry added to a document: document and entry ids, version, by
ANSWER_APPROVED = "answer_approved"  # an operator approved a model answer for reuse: reply id, document id, by whom
ANSWER_REVOKED = "answer_revoked"  # an approved answer was withdrawn: reply id, document id, by whom
KB_USED = "kb_used"  # the knowledge-base passages and FAQ entries (ids) a model answer was given
INTENT = "intent"  # a worker set the message's intent (a voice once transcribed, or the model's): label, source
TRUNCATED = "truncated"  # a WeChat-family text (or transcription) over max_text_chars was cut: chars received, kept
SEND_ATTEMPTED = "send_attempted"  # a part of a reply is about to be sent (part); written before the platform call
SEND_REFUSED = "send_refused"  # the platform answered a part's send with an errcode: it does not have that part
POSSIBLE_DUPLICATE = "possible_duplicate"  # a part attempted before is sent again through an API without a key
RESEND_REFUSED = "resend_refused"  # kf: the platform refused a resent part's msgid: it has that part already
API_KEY_ADDED = "api_key_added"  # kefu apikey add: the key's name and prefix (never the key)
API_KEY_REVOKED = "api_key_revoked"  # kefu apikey revoke: the key's name and prefix
# a request or message refused by admission control (channels.admission): scope, limit, retry_after_s and a keyed
# hash of the subject (never the IP, openid or key), or the wait estimate for backpressure
ADMISSION_REFUSED = "admission_refused"

MODEL_ROLLED_BACK = "model_rolled_back"  # a canary model taken out (by auto or a person): model, rate, window, counts
MODEL_PROMOTED = "model_promoted"  # a canary model given every conversation by hand (kefu model promote): model, by
MODEL_RESUMED = "model_resumed"  # a canary model back on its share by hand (kefu model resume): model, by


_INSERT = insert(cast(Table, AuditEvent.__table__))
# SQLite: detail goes in as the exact JSON text that was hashed, not re-serialized by the JSON type
_INSERT_CHAINED = insert(cast(Table, AuditEvent.__table__)).values(detail=type_coerce(bindparam("detail_text"), String))
# the write lock on the database comes with this UPDATE, so no other writer can append in between
_SQLITE_HEAD = text("UPDATE audit_chain SET seq = seq + 1 WHERE chain = :chain RETURNING seq, hash")
_SQLITE_NEXT_ID = text("SELECT coalesce(max(id), 0) + 1 FROM audit_event")
_SQLITE_SET_HEAD = text("UPDATE audit_chain SET hash = :hash WHERE chain = :chain")


def record(
    session: Session,
    kind: str,
    *,
    channel: str | None = None,
    conversation_id: int | None = None,
    inbound_id: int | None = None,
    reply_id: int | None = None,
    **detail: Any,
) -> None:
    # One prebuilt Core INSERT, not session.add(): no unit-of-work bookkeeping and no statement to
    # compile on the hot path, and the row is written where this call stands in the transaction.
    row = {"at": utcnow(), "kind": kind, "channel": channel, "conversation_id": conversation_id,
           "inbound_id": inbound_id, "reply_id": reply_id}
    detail = pii.mask_value(detail)  # personal data never reaches the audit log in the clear (docs/privacy.md)
    if session.get_bind().dialect.name == "sqlite":
        _append_sqlite(session, row, json.dumps(detail))
    else:  # PostgreSQL: the trigger chains the row (migration 0005)
        session.execute(_INSERT, {**row, "detail": detail})


def _append_sqlite(session: Session, row: dict[str, Any], detail_text: str) -> None:
    """Chain the row in Python, in the caller's transaction (``models.audit_chain``)."""
    seq, prev_hash = session.execute(_SQLITE_HEAD, {"chain": CHAIN_SQLITE}).one()
    id_ = int(session.execute(_SQLITE_NEXT_ID).scalar_one())
    at: datetime = row["at"]
    hash_ = row_hash(prev_hash, id_, CHAIN_SQLITE, seq, at, row["kind"], row["channel"], row["conversation_id"],
                     row["inbound_id"], row["reply_id"], detail_text)
    session.execute(_INSERT_CHAINED, {**row, "id": id_, "chain": CHAIN_SQLITE, "seq": seq, "prev_hash": prev_hash,
                                      "hash": hash_, "detail_text": detail_text})
    session.execute(_SQLITE_SET_HEAD, {"hash": hash_, "chain": CHAIN_SQLITE})

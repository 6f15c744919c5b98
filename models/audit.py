"""The audit log's vocabulary and its one writer.

Rows are only ever inserted (the database rejects UPDATE/DELETE on ``audit_event``). Details hold
ids, sizes, timings and reasons, never message text or customer identifiers in the clear.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session

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


_INSERT = insert(cast(Table, AuditEvent.__table__))


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
    session.execute(
        _INSERT,
        {"at": utcnow(), "kind": kind, "channel": channel, "conversation_id": conversation_id,
         "inbound_id": inbound_id, "reply_id": reply_id, "detail": detail},
    )

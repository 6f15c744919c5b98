"""The sweeper: publishes again whatever was left unfinished, so that nothing accepted is lost.

- an inbound never published (a broker outage at ingress, 30 s) or published long ago and still not
  answered (a lost task, a killed worker: ``requeue_after_s``) → ``handle_inbound`` again, ``requeued``
  audited; the conditional UPDATEs and ``reply UNIQUE(inbound_id)`` make a second run harmless;
- a delivery still pending or sending after ``redeliver_after_s`` → ``deliver`` again (a worker that died
  mid-send left it "sending"; the deliver task's claim keeps two sends from racing);
- news a pulling channel recorded that no finished pull has read → ``pull`` again;
- on the embedded queue, messages consumed long ago are deleted.

Runs every ``sweep_interval_s`` (Celery beat) and is safe to run anywhere, any number of times. A publish
that fails is logged and left for the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from channels import registry
from models import audit
from models.envelope import utcnow
from models.infra.db import transaction
from models.infra.embedded_broker import purge_consumed
from models.states import UNFINISHED, WAITING, DeliveryStatus, InboundStatus
from models.tables import DeliveryRecord, InboundRecord
from workers.runtime import Runtime

log = logging.getLogger(__name__)

BATCH = 500
NEVER_QUEUED_S = 30


def sweep(rt: Runtime) -> dict[str, int]:
    s = rt.settings
    now = utcnow()
    never_queued = now - timedelta(seconds=NEVER_QUEUED_S)
    counts = {
        "requeued": requeue_inbound(rt, never_queued, now - timedelta(seconds=s.requeue_after_s)),
        "redelivered": redeliver(rt, now - timedelta(seconds=s.redeliver_after_s)),
        "resynced": repull(rt, never_queued),
        "purged": purge_consumed(s.embedded_broker_file, s.requeue_after_s) if s.embedded_broker else 0,
    }
    if counts["requeued"] or counts["redelivered"] or counts["resynced"]:
        log.info("sweep published %d inbound, %d deliveries and %d pulls again",
                 counts["requeued"], counts["redelivered"], counts["resynced"])
    return counts


def _republish(rt: Runtime, rows: Sequence[Any], what: str, publish: Callable[[Any], None],
               mark: Callable[[Session, Any], None] | None = None) -> int:
    """Publish each row's task again, then record it (``mark``) in its own transaction; how many were published."""
    published = 0
    for row in rows:
        try:
            publish(row)
        except Exception as exc:
            log.warning("sweep could not publish %s %s: %s", what, row[0], type(exc).__name__)
            continue
        if mark is not None:
            with transaction(rt.sessions) as session:
                mark(session, row)
        published += 1
    return published


def requeue_inbound(rt: Runtime, never_queued: datetime, stale_queue: datetime) -> int:
    """Messages whose handle_inbound was never published (a broker outage at ingress) or was lost."""
    with rt.sessions() as session:
        rows = session.execute(
            select(InboundRecord.id, InboundRecord.conversation_id, InboundRecord.channel)
            .where(or_(
                and_(InboundRecord.status == InboundStatus.RECEIVED, InboundRecord.received_at < never_queued),
                and_(InboundRecord.status == InboundStatus.QUEUED, InboundRecord.queued_at < stale_queue),
            ))
            .order_by(InboundRecord.id).limit(BATCH)
        ).all()

    def mark(session: Session, row: Any) -> None:
        inbound_id, conversation_id, channel = row
        session.execute(update(InboundRecord).where(InboundRecord.id == inbound_id)
                        .where(InboundRecord.status.in_(WAITING))
                        .values(status=InboundStatus.QUEUED, queued_at=utcnow()))
        audit.record(session, audit.REQUEUED, channel=channel, conversation_id=conversation_id, inbound_id=inbound_id)

    return _republish(rt, rows, "inbound", lambda row: rt.publisher.handle_inbound(row[0]), mark)


def redeliver(rt: Runtime, stale_delivery: datetime) -> int:
    """Deliveries still pending or sending (a lost task; a worker that died mid-send left it "sending")."""
    with rt.sessions() as session:
        rows = session.execute(
            select(DeliveryRecord.reply_id, DeliveryRecord.channel)
            .where(DeliveryRecord.status.in_(UNFINISHED), DeliveryRecord.updated_at < stale_delivery)
            .order_by(DeliveryRecord.id).limit(BATCH)
        ).all()

    def mark(session: Session, row: Any) -> None:
        reply_id, channel = row
        session.execute(update(DeliveryRecord).where(DeliveryRecord.reply_id == reply_id)
                        .where(DeliveryRecord.status.in_(UNFINISHED))
                        .values(status=DeliveryStatus.PENDING, updated_at=utcnow()))
        audit.record(session, audit.REQUEUED, channel=channel, reply_id=reply_id)

    return _republish(rt, rows, "delivery", lambda row: rt.publisher.deliver(row[0]), mark)


def repull(rt: Runtime, requested_before: datetime) -> int:
    """News that no finished pull has read, for every channel that pulls: its task was lost or failed."""
    published = 0
    for found in registry.channels():
        if found.puller is None:
            continue
        with rt.sessions() as session:
            sources = rt.puller(found.name).unfinished(session, requested_before, BATCH)

        def publish(source: tuple[str, str], channel: str = found.name) -> None:
            rt.publisher.pull(channel, *source)

        published += _republish(rt, sources, f"{found.name} pull", publish)  # the pull's own run records its end
    return published

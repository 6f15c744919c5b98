"""The tasks: ``handle_inbound(id)`` (queue llm), ``deliver(id)`` and ``sweep()`` (queue io).

Tasks carry ids, never payloads, and are safe to run twice: ``reply UNIQUE(inbound_id)`` and
conditional status updates decide who wins, so a redelivered or re-published task does nothing new.

- ``handle_inbound``: per-conversation lock, answered in arrival order (:mod:`workers.answering`
  decides, generates and stores), then publishes ``deliver``. Order is strict, whatever the recovery path
  (kill -9, SIGTERM, the broker's redelivery, the sweeper, both at once): the holder of the conversation's
  lock first answers the oldest message still waiting — its own task may be lost, late or queued behind —
  one generation per run, then runs again for its own.
- ``deliver``: sends through the channel; retries a ``Retryable`` failure with exponential backoff,
  records a ``Permanent`` one (and exhausted retries) as failed; each send is timed and each failure counted by
  the platform's error code (``kefu_delivery_seconds``, ``kefu_delivery_failures_total``).
- ``pull``: pulls a channel's new messages from one source (its ``Puller``: WeChat Customer Service);
  waits its turn while another worker pulls the same source; retries platform failures.
- ``sweep``: :mod:`workers.sweeper` publishes again any inbound, delivery or pull left unfinished (a lost task, a killed
  worker, a broker outage at ingress), and on the embedded queue deletes long-consumed messages.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import Retry, SoftTimeLimitExceeded
from sqlalchemy import select, update

from channels.base import DeliveryProgress, PullBusy
from models import audit, desk
from models.envelope import ConversationKey, Reply, utcnow
from models.errors import Permanent, Retryable
from models.infra import logs, metrics
from models.infra.db import transaction
from models.infra.queues import DELIVER, HANDLE_INBOUND, PULL, SWEEP
from models.replies import reply_id_of
from models.states import WAITING, DeliveryStatus, InboundStatus, reply_source
from models.tables import ConversationRecord, DeliveryRecord, InboundRecord, ReplyRecord
from workers import answering, sweeper, voice
from workers.runtime import Runtime, runtime

log = logging.getLogger(__name__)

LOCK_WAIT_S = 0.5  # then give the thread back and try again shortly
ORDER_RETRY_S = 0.2


UNEXPECTED_RETRIES = 5


def handle_inbound(task: Task, inbound_id: int, failures: int = 0) -> str:
    """``failures``: unexpected errors so far. Counted apart from Celery's ``retries``, which waiting for an
    earlier message of the conversation also uses up (many short retries behind a long answer)."""
    try:
        return _handle_inbound(task, inbound_id)
    except (Retry, SoftTimeLimitExceeded):
        raise
    except Exception as exc:  # a database hiccup, a bug: try again before the sweeper has to
        if failures >= UNEXPECTED_RETRIES:
            raise
        log.exception("handle_inbound %s failed; retrying", inbound_id)
        raise task.retry(countdown=min(2**failures, 30), args=(inbound_id,),
                         kwargs={"failures": failures + 1}) from exc


def _handle_inbound(task: Task, inbound_id: int) -> str:
    rt = runtime()
    with rt.sessions() as session:
        row = session.get(InboundRecord, inbound_id)
        if row is None:
            log.error("inbound %s not found; dropping the task", inbound_id)
            return "missing"
        conv = session.get(ConversationRecord, row.conversation_id)
        assert conv is not None
    logs.set_conversation(conv.id)  # this task's log lines carry it (cleared after the task: workers/celery_app.py)
    key = ConversationKey(conv.channel, conv.account, conv.peer)
    hard = rt.settings.generation_hard_limit_s
    # The lock outlives the hard limit (after which Celery kills the task) by a little, so a lock left by a
    # killed worker frees itself soon after its message is redelivered.
    with rt.locks.hold(f"conversation:{conv.id}", ttl_s=hard + 5, wait_s=LOCK_WAIT_S) as acquired:
        if not acquired:
            raise task.retry(countdown=ORDER_RETRY_S)
        with rt.sessions() as session:
            existing = reply_id_of(session, inbound_id)
            earlier = _earliest_waiting(session, row) if existing is None else None
        if existing is not None:  # answered already (a redelivered or re-published task)
            rt.publisher.deliver(existing)
            return "already-answered"
        if earlier is not None:  # answer the older message first, then run again for ours
            _answer(task, rt, earlier, key)
            _still_alive(rt, inbound_id)
            raise task.retry(countdown=ORDER_RETRY_S)
        _answer(task, rt, row, key)
    return "answered"


def _answer(task: Task, rt: Runtime, row: InboundRecord, key: ConversationKey) -> int:
    """Answer ``row`` (the caller holds its conversation's lock) and publish its delivery."""
    try:
        reply_id = answering.answer(rt, row, key)
    except voice.TryAgain as exc:
        raise task.retry(countdown=exc.countdown) from exc
    rt.publisher.deliver(reply_id)
    return reply_id


def _earliest_waiting(session: Any, row: InboundRecord) -> InboundRecord | None:
    """The oldest message of the same conversation before ``row`` that is still waiting for its answer.

    No age limit: skipping a stuck older message is exactly what answered a conversation out of order after
    a crash (the sweeper re-publishes the old ones in the same pass). The lock holder answers it instead.
    """
    return session.scalars(
        select(InboundRecord).where(
            InboundRecord.conversation_id == row.conversation_id,
            InboundRecord.id < row.id,
            InboundRecord.status.in_(WAITING),
        ).order_by(InboundRecord.id).limit(1)
    ).first()


def _still_alive(rt: Runtime, inbound_id: int) -> None:
    """Tell the sweeper this message's task is alive (it waits behind older ones), so it is not re-published."""
    with transaction(rt.sessions) as session:
        session.execute(update(InboundRecord)
                        .where(InboundRecord.id == inbound_id, InboundRecord.status == InboundStatus.QUEUED)
                        .values(queued_at=utcnow()))


def deliver(task: Task, reply_id: int) -> str:
    rt = runtime()
    with rt.sessions() as session:
        found = session.execute(
            select(ReplyRecord, DeliveryRecord, ConversationRecord, InboundRecord.received_at)
            .join(DeliveryRecord, DeliveryRecord.reply_id == ReplyRecord.id)
            .join(ConversationRecord, ConversationRecord.id == ReplyRecord.conversation_id)
            .outerjoin(InboundRecord, InboundRecord.id == ReplyRecord.inbound_id)  # none for an agent's message
            .where(ReplyRecord.id == reply_id)
        ).first()
    if found is None:
        log.error("reply %s has no delivery row; dropping the task", reply_id)
        return "missing"
    reply_row, delivery, conv, inbound_at = found
    logs.set_conversation(conv.id)
    if inbound_at is None:  # an agent's message: platforms count their reply window from the customer's last message
        inbound_at = conv.last_inbound_at
    # Claim the delivery: of two deliver tasks for one reply (a re-published task, the sweeper), only
    # the one that moves it from pending to sending sends; a platform cannot take a message back.
    with transaction(rt.sessions) as session:
        claimed = session.execute(
            update(DeliveryRecord)
            .where(DeliveryRecord.reply_id == reply_id, DeliveryRecord.status == DeliveryStatus.PENDING)
            .values(status=DeliveryStatus.SENDING, updated_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]
    if not claimed:
        return "not-pending"
    key = ConversationKey(conv.channel, conv.account, conv.peer)
    ids: dict[str, Any] = {
        "channel": key.channel, "conversation_id": conv.id, "inbound_id": reply_row.inbound_id, "reply_id": reply_id
    }
    source = reply_source(reply_row.source)
    if source is None:  # written by another Kefu version: this one cannot know how to send it
        _fail(rt, reply_id, ids, f"permanent: unknown reply source {reply_row.source!r}")
        return "failed"
    reply = Reply(reply_row.id, reply_row.inbound_id, conv.id, key, reply_row.text, inbound_at, source)
    def record_parts(parts_sent: int) -> None:
        with transaction(rt.sessions) as session:
            session.execute(update(DeliveryRecord).where(DeliveryRecord.reply_id == reply_id)
                            .values(parts_sent=parts_sent, updated_at=utcnow()))

    started = time.perf_counter()
    try:
        rt.outbound(key.channel).send(reply, DeliveryProgress(delivery.parts_sent, record_parts))
        metrics.sent(key.channel, time.perf_counter() - started)  # the send only, not recording it below
    except Permanent as exc:
        metrics.send_failed(key.channel, "permanent", exc)
        _fail(rt, reply_id, ids, f"permanent: {exc}")
        return "failed"
    except Retryable as exc:
        retries = task.request.retries
        if retries >= rt.settings.delivery_max_retries:
            metrics.send_failed(key.channel, "exhausted", exc)
            _fail(rt, reply_id, ids, f"gave up after {retries + 1} attempts: {exc}")
            return "failed"
        metrics.send_failed(key.channel, "retry", exc)
        with transaction(rt.sessions) as session:
            session.execute(
                update(DeliveryRecord).where(DeliveryRecord.reply_id == reply_id,
                                             DeliveryRecord.status == DeliveryStatus.SENDING)
                .values(status=DeliveryStatus.PENDING, attempts=DeliveryRecord.attempts + 1, last_error=str(exc)[:500],
                        updated_at=utcnow())
            )
            audit.record(session, audit.DELIVERY_RETRY, **ids, attempt=retries + 1, reason=str(exc)[:200])
        # the receiver's Retry-After when it gave one (the channel caps it), else exponential backoff
        countdown = exc.retry_after_s if exc.retry_after_s is not None else min(2**retries, 300)
        raise task.retry(countdown=countdown) from exc
    with transaction(rt.sessions) as session:
        moved = session.execute(
            update(DeliveryRecord)
            .where(DeliveryRecord.reply_id == reply_id, DeliveryRecord.status == DeliveryStatus.SENDING)
            .values(status=DeliveryStatus.SENT, attempts=DeliveryRecord.attempts + 1, updated_at=utcnow())
        ).rowcount  # type: ignore[attr-defined]
        if moved:  # 0 when the customer's client already confirmed it (a gateway re-sent it first)
            audit.record(session, audit.DISPATCHED, **ids)
    rt.bus.publish(desk.TOPIC, desk.event("reply", conv.id, channel=key.channel, reply_id=reply_id))
    return "sent"


def _fail(rt: Runtime, reply_id: int, ids: dict[str, Any], reason: str) -> None:
    with transaction(rt.sessions) as session:
        session.execute(
            update(DeliveryRecord).where(DeliveryRecord.reply_id == reply_id)
            .values(status=DeliveryStatus.FAILED, last_error=reason[:500], attempts=DeliveryRecord.attempts + 1,
                    updated_at=utcnow())
        )
        audit.record(session, audit.DELIVERY_FAILED, **ids, reason=reason[:500])


PULL_BUSY_RETRY_S = 0.5


def pull(task: Task, channel: str, account: str, source: str) -> str:
    """Pull a channel's new messages from one source (its ``Puller``); retries while another worker pulls it."""
    try:
        stored = runtime().puller(channel).run(account, source)
    except PullBusy as exc:  # the running pull may already be past the news that published this task
        raise task.retry(countdown=min(PULL_BUSY_RETRY_S * 2 ** task.request.retries, 5.0)) from exc
    except Retryable as exc:
        log.warning("%s pull %s/%s: %s; retrying", channel, account, source, exc)
        raise task.retry(countdown=min(2 ** task.request.retries, 60)) from exc
    except Permanent as exc:  # configuration or permission: the sweeper tries again later
        log.error("%s pull %s/%s failed: %s", channel, account, source, exc)
        return "failed"
    return f"stored {stored}"


def sweep() -> dict[str, int]:
    """Publish again what was left unfinished (:mod:`workers.sweeper`). Safe to run anywhere, any number of times."""
    return sweeper.sweep(runtime())


def register(app: Celery) -> None:
    """Bind the task functions to a Celery app under their public names."""
    # max_retries=None on the task itself: Celery's retry(max_retries=None) means "the task's default",
    # which is 3 — a message waiting its turn in a busy conversation would be dropped after three tries.
    app.task(name=HANDLE_INBOUND, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)(handle_inbound)
    app.task(name=DELIVER, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)(deliver)
    app.task(name=PULL, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)(pull)
    app.task(name=SWEEP, acks_late=True)(sweep)


__all__ = ["deliver", "handle_inbound", "pull", "register", "sweep"]

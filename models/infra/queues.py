"""Queue names, task names, routing and the Celery configuration shared by every process.

Channels publish by task *name* (:class:`Publisher`), so they never import workers. The same
:func:`celery_config` is used by publishers and workers, which keeps routing and transport options
identical on both sides.

Reliability settings: late acks, reject on worker loss, prefetch 1, a per-task hard time limit,
and for Redis a visibility timeout longer than that limit (checked by ``Settings``).

The gateway's publisher (``make_celery(..., gateway=True)``) must never hold a request on a broker that does
not answer: its Redis sockets time out after ``KEFU_PUBLISH_TIMEOUT_S`` and a failed publish is not retried
(the sweeper publishes the message; a retry measured 3 s against a hung broker, not 1); after a failure the
:class:`Publisher` raises :class:`BrokerUnavailable` at once for ``KEFU_PUBLISH_RETRY_AFTER_S`` (the caller
leaves the message to the sweeper), instead of making every request wait for the same timeout.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu import Queue
from kombu.exceptions import ChannelError

from models.infra.breaker import Breaker
from models.settings import Settings

LLM_QUEUE = "llm"
IO_QUEUE = "io"
QUEUES = (LLM_QUEUE, IO_QUEUE)

HANDLE_INBOUND = "kefu.handle_inbound"
DELIVER = "kefu.deliver"
SWEEP = "kefu.sweep"
PULL = "kefu.pull"  # pull a channel's new messages from one source (WeChat Customer Service: kf/sync_msg, one open_kfid)

ROUTES = {
    HANDLE_INBOUND: {"queue": LLM_QUEUE},
    DELIVER: {"queue": IO_QUEUE},
    SWEEP: {"queue": IO_QUEUE},
    PULL: {"queue": IO_QUEUE},
}

log = logging.getLogger(__name__)


class BrokerUnavailable(ConnectionError):
    """A publish was not attempted: the broker failed a moment ago (see :class:`Publisher`)."""


def celery_config(settings: Settings, *, gateway: bool = False) -> dict[str, Any]:
    transport_options: dict[str, Any]
    config: dict[str, Any] = {}
    # the gateway does not retry a Redis publish: against a hung broker a retry costs another connect and read timeout
    retries = 0 if gateway and not settings.embedded_broker else 3
    if settings.embedded_broker:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        import models.infra.embedded_broker  # noqa: F401 - registers the kefu-sqla URL scheme
        transport_options = {"connect_args": {"timeout": 30}}
    else:
        transport_options = {
            "visibility_timeout": settings.visibility_timeout_s,
            # look for messages of dead workers every few seconds (kombu's default is every ~100 s)
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
            "socket_timeout": settings.publish_timeout_s if gateway else settings.redis_timeout_s,
            "socket_connect_timeout": settings.publish_timeout_s if gateway else settings.redis_timeout_s,
            "health_check_interval": 30,
        }
    config.update(
        broker_url=settings.effective_broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=settings.publish_timeout_s,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue=IO_QUEUE,
        task_routes=ROUTES,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # a prefork child that loads the model (--warm) needs longer than Celery's 4 s to report alive
        worker_proc_alive_timeout=300,
        task_time_limit=settings.generation_hard_limit_s,
        task_soft_time_limit=settings.generation_soft_limit_s,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": retries, "interval_start": 0, "interval_step": 0.2, "interval_max": 1},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
        timezone="UTC",
        beat_schedule={
            "kefu-sweep": {"task": SWEEP, "schedule": float(settings.sweep_interval_s), "options": {"queue": IO_QUEUE}}
        },
        beat_schedule_filename=str((settings.data_dir / "celerybeat-schedule").resolve()),
    )
    return config


def make_celery(settings: Settings, main: str = "kefu", *, gateway: bool = False) -> Celery:
    app = Celery(main)
    app.conf.update(celery_config(settings, gateway=gateway))
    return app


def queue_depth(celery: Celery, queue: str) -> int:
    """Messages waiting in ``queue`` (not those a worker has reserved): a passive declare on a pooled connection.
    0 for a queue never declared or (Redis) empty, which Redis does not keep. Raises what the broker raises."""
    with celery.connection_for_read() as conn:
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:
            return 0


class Publisher:
    """Publishes tasks by name; the only way channels reach workers.

    With ``retry_after_s``, a failed publish makes the next ones raise :class:`BrokerUnavailable` at once for
    that long (a broker that hangs costs one timeout, not one per request); then the next publish tries again.
    """

    def __init__(self, celery: Celery, retry_after_s: float | None = None) -> None:
        self._celery = celery
        self._breaker = None if retry_after_s is None else Breaker(
            retry_after_s, BrokerUnavailable, "the broker failed a moment ago; not trying again yet")

    def _send(self, name: str, args: tuple[Any, ...], **options: Any) -> None:
        if self._breaker is None:
            self._celery.send_task(name, args=args, **options)
            return
        self._breaker.check()
        try:
            self._celery.send_task(name, args=args, **options)
        except Exception:
            self._breaker.trip()
            raise

    def handle_inbound(self, inbound_id: int) -> None:
        self._send(HANDLE_INBOUND, (inbound_id,), **ROUTES[HANDLE_INBOUND])

    def deliver(self, reply_id: int, countdown: float | None = None) -> None:
        self._send(DELIVER, (reply_id,), countdown=countdown, **ROUTES[DELIVER])

    def pull(self, channel: str, account: str, source: str, countdown: float | None = None) -> None:
        self._send(PULL, (channel, account, source), countdown=countdown, **ROUTES[PULL])

    def ping(self, timeout: float) -> None:
        """A round trip to the broker on a new connection: kombu's Redis transport PINGs when it connects, so a
        hung broker (it accepts connections, never answers) fails this too."""
        with self._celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)

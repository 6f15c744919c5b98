"""How long a new message would wait for the model, counted where the backlog is: published by each LLM worker.

The batched engine knows only the requests the worker's pool threads gave it — at most one per thread, so about
its slots: a burst beyond that waits in the broker's ``llm`` queue, where the engine cannot see it, and the
engine's own estimate stays near zero while customers wait a minute (the 1,000-user load test: replies at 55 s,
backpressure at 1.5 s never refusing). Every :data:`EVERY_S` this thread publishes (:mod:`models.infra.load`, read
by admission control's backpressure and the WeChat busy notice)::

    wait = the engine's estimate + messages waiting in the llm queue × the engine's service time / slots

where slots are those of every live LLM worker (their heartbeats), since each of them takes from the same queue.
Nothing is published before the engine is built or while it has no service time yet (an upstream engine has
none: its queue is the upstream's). A broker or KV store that fails is logged once per outage; the figure then
ages out (``WAIT_TTL_S``): no backpressure rather than a stale one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from models.infra import heartbeat
from models.infra.kv import KV
from models.infra.load import publish_wait

log = logging.getLogger(__name__)

EVERY_S = 1.0
SLOTS_EVERY_S = 10.0  # the fleet's slots change rarely: read the heartbeats this often


def estimate(engine_wait_s: float, waiting: int, service_s: float, slots: int) -> float:
    """The wait of a message published now: the engine's own, plus the broker backlog drained ``slots`` at a time."""
    return engine_wait_s + waiting * service_s / max(1, slots)


class BacklogThread:
    def __init__(self, kv: KV, engine: Callable[[], object | None], waiting: Callable[[], int],
                 every_s: float = EVERY_S) -> None:
        self._kv, self._engine, self._waiting, self._every_s = kv, engine, waiting, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kefu-backlog", daemon=True)
        self._slots, self._slots_at = 0, -SLOTS_EVERY_S
        self._failing = False
        self.last: float | None = None

    def start(self) -> BacklogThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def publish_once(self) -> float | None:
        """Measure and publish; the figure, or None when there is nothing to say yet (or it failed)."""
        engine = self._engine()
        service = float(getattr(engine, "service_s", 0.0) or 0.0)
        if engine is None or service <= 0 or not hasattr(engine, "wait_estimate_s"):
            return None
        try:
            wait = estimate(engine.wait_estimate_s(), self._waiting(), service, self._fleet_slots(engine))
            publish_wait(self._kv, wait)
        except Exception as exc:
            if not self._failing:
                log.warning("the model's wait estimate is not published (%s)", type(exc).__name__)
            self._failing = True
            return None
        self._failing = False
        self.last = wait
        return wait

    def _fleet_slots(self, engine: object) -> int:
        now = time.monotonic()
        if now - self._slots_at >= SLOTS_EVERY_S:
            self._slots_at = now
            try:
                self._slots = sum(beat.slots for beat in heartbeat.alive(self._kv))
            except Exception:
                self._slots = 0
        return self._slots or int(getattr(engine, "n_slots", 1) or 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.publish_once()
            self._stop.wait(self._every_s)

"""The heartbeat of an LLM worker process: says every few seconds that it is alive and whether its model is loaded.

Runs as a daemon thread in the process that runs the ``llm`` queue's tasks (the worker itself with the threads or
solo pool, each child with prefork), written through :mod:`models.infra.heartbeat`. It never builds the engine: a
worker without ``--warm`` says ``loaded: false`` until its first message loads the model. A KV store that does not
answer is logged (once per outage) and tried again on the next beat; it never stops the worker.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from models.infra import heartbeat
from models.infra.kv import KV

log = logging.getLogger(__name__)


class EngineState:
    """What the heartbeat reports about a process's chat engine, read without building it."""

    def __init__(self, engine: Callable[[], object | None]) -> None:
        self._engine = engine

    def now(self) -> tuple[str, bool, int]:
        """(model name, loaded, slots): ``("", False, 0)`` while the engine is not built."""
        engine = self._engine()
        if engine is None:
            return "", False, 0
        loaded = bool(getattr(engine, "loaded", True))  # a test's scripted engine has nothing to load
        slots = int(getattr(engine, "n_slots", 0) or 0)
        # an upstream engine names its model and where it is served (label); a local one its GGUF (model_name)
        name = getattr(engine, "label", None) or getattr(engine, "model_name", "")
        return str(name), loaded, slots if loaded else 0


class HeartbeatThread:
    def __init__(self, kv: KV, node: str, state: EngineState, interval_s: float = heartbeat.INTERVAL_S) -> None:
        self._kv, self._node, self._state, self._interval_s = kv, node, state, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kefu-heartbeat", daemon=True)
        self._failing = False
        self.last: heartbeat.Heartbeat | None = None

    def start(self) -> HeartbeatThread:
        self._thread.start()
        return self

    def beat_once(self) -> None:
        model, loaded, slots = self._state.now()
        current = heartbeat.Heartbeat(node=self._node, pid=os.getpid(), model=model, loaded=loaded, slots=slots)
        try:
            heartbeat.beat(self._kv, current)
        except Exception as exc:
            if not self._failing:
                log.warning("heartbeat not written (%s); /readyz will not see this worker until it is",
                            type(exc).__name__)
            self._failing = True
            return
        if self._failing:
            log.info("heartbeat written again")
        self._failing = False
        self.last = current

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat_once()
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        """Stop beating and delete this process's key (readiness notices now, not in TTL_S)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self.last is not None:
            try:
                heartbeat.stopped(self._kv, self.last)
            except Exception as exc:  # it expires on its own
                log.warning("heartbeat key not deleted (%s); it expires in %.0f s", type(exc).__name__,
                            heartbeat.TTL_S)

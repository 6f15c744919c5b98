"""The worker's Celery app: shared configuration (models.infra.queues), tasks, process hooks.

Built by :func:`create_app` from Settings — never at import — so ``kefu worker`` and tests choose
the configuration. ``Settings.check_reliability`` has already refused unsafe combinations (e.g. a
Redis visibility timeout shorter than the generation hard limit) before this runs.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from channels import registry
from models.infra import logs, metrics
from models.infra.queues import LLM_QUEUE, make_celery, queue_depth
from models.settings import Settings
from workers import runtime as runtime_module
from workers.backlog import BacklogThread
from workers.heartbeat import EngineState, HeartbeatThread
from workers.llm.embedding import load_encoder
from workers.tasks import register

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, warm: bool = False, llm_node: str | None = None) -> Celery:
    """``llm_node``: this worker serves the llm queue under that Celery node name; the process that runs its tasks
    then beats a heartbeat (:mod:`workers.heartbeat`) that ``/readyz`` and ``kefu status`` read."""
    settings.check_reliability()
    load_encoder(settings)  # a KEFU_EMBEDDING_MODEL_PATH that is no file stops the worker now (ConfigError)
    registry.check(settings)  # every channel's settings section: a bad one stops the worker now
    app = make_celery(settings, "kefu")
    register(app)
    runtime_module.configure(settings)

    def _warm() -> None:
        runtime_module.runtime().knowledge.warm()  # the passages for grounded answers, loaded in the background
        dense_faq = runtime_module.runtime().dense_faq
        if dense_faq is not None:  # the FAQ's vectors, in the background too
            threading.Thread(target=dense_faq.warm, name="kefu-faq-encode", daemon=True).start()
        try:
            runtime_module.runtime().llm.load()
        except Exception:  # a broken model still lets the worker answer with the fallback reply
            log.exception("model warm-up failed; generations will report the error")

    beating: list[HeartbeatThread] = []  # this process's heartbeat, once it serves the llm queue

    def _serve_here() -> None:
        """Start what the process that runs the tasks needs: the knowledge base's FAQ kept in sync, the heartbeat,
        the warm-up."""
        runtime_module.runtime().faq_sync  # noqa: B018  (the property starts the sync thread)
        if llm_node is not None and not beating:
            state = EngineState(lambda: runtime_module.runtime().__dict__.get("llm"))  # never builds the engine
            beating.append(HeartbeatThread(runtime_module.runtime().kv, llm_node, state).start())
            # the wait a new message has, the broker's backlog included (workers.backlog); the engine alone sees
            # only what this process's pool threads gave it
            BacklogThread(runtime_module.runtime().kv, lambda: runtime_module.runtime().__dict__.get("llm"),
                          lambda: queue_depth(app, LLM_QUEUE)).start()
        if warm:
            _warm()
            if beating:
                beating[0].beat_once()  # loaded: say so now, not at the next beat

    @worker_process_init.connect(weak=False)
    def _child_started(**_: Any) -> None:
        runtime_module.reset_after_fork()
        _serve_here()

    @worker_ready.connect(weak=False)
    def _ready(sender: Any = None, **_: Any) -> None:
        for line in settings.backend_choice():
            log.info("worker %s", line)
        if "prefork" not in type(getattr(sender, "pool", None)).__module__:
            _serve_here()  # threads/solo pools run tasks in this process; prefork children start their own

    @task_prerun.connect(weak=False)
    @task_postrun.connect(weak=False)
    def _no_conversation(**_: Any) -> None:
        logs.set_conversation(None)  # a pool thread runs many tasks: one's conversation never labels the next's lines

    @worker_process_shutdown.connect(weak=False)
    @worker_shutdown.connect(weak=False)
    def _stopping(**_: Any) -> None:
        while beating:
            beating.pop().stop()  # first: readiness drops before the model goes
        runtime_module.shutdown()  # free the model and connections before the interpreter tears down
        metrics.process_exited()  # its live gauges (model loaded, slots) stop counting

    return app

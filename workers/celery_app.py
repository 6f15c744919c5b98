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
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

from channels import registry
from models.infra import metrics
from models.infra.queues import make_celery
from models.settings import Settings
from workers import runtime as runtime_module
from workers.llm.embedding import load_encoder
from workers.tasks import register

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, warm: bool = False) -> Celery:
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

    def _serve_here() -> None:
        """Start what the process that runs the tasks needs: the knowledge base's FAQ kept in sync, the warm-up."""
        runtime_module.runtime().faq_sync  # noqa: B018  (the property starts the sync thread)
        if warm:
            _warm()

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

    @worker_process_shutdown.connect(weak=False)
    @worker_shutdown.connect(weak=False)
    def _stopping(**_: Any) -> None:
        runtime_module.shutdown()  # free the model and connections before the interpreter tears down
        metrics.process_exited()  # its live gauges (model loaded, slots) stop counting

    return app

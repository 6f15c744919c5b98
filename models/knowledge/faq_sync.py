"""Keeps the process's FAQ index (:mod:`models.knowledge.faq_cache`) in step with the knowledge base's FAQ sheets.

:meth:`FaqSync.poll` reads ``kb_state.revision`` (one single-row SELECT) and, when it moved, every FAQ entry, and
installs them (ids ``kb:<row id>``) beside ``KEFU_FAQ``'s; the index is rebuilt there, in the polling thread, so a
customer's message never waits for it. :meth:`FaqSync.start` polls at once and then every ``interval_s`` in a
daemon thread (the gateway and the worker, each process its own).

A database error is logged and the installed entries stay: a knowledge-base outage never stops the FAQ that was
loaded, nor ``KEFU_FAQ``. Entries an operator deleted stop answering within ``interval_s``.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.knowledge import faq_cache, store
from models.settings import Settings

log = logging.getLogger(__name__)

INTERVAL_S = 5.0


class FaqSync:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings, interval_s: float = INTERVAL_S) -> None:
        self._sessions, self._settings, self._interval_s = sessions, settings, interval_s
        self._revision: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        """Look once; True when a new set of entries was installed."""
        with self._lock:
            try:
                with self._sessions() as session:
                    revision = store.revision(session)
                    if revision == self._revision:
                        return False
                    rows = store.faq_rows(session)
            except SQLAlchemyError as exc:
                log.warning("knowledge-base FAQ not refreshed (%s); keeping the entries loaded", type(exc).__name__)
                return False
            try:
                faq_cache.install([row.entry() for row in rows], self._settings)
            except ValueError as exc:  # an entry the index refuses: keep the old ones, say which
                log.error("knowledge-base revision %d: FAQ entries not installed (%s)", revision, exc)
                return False
            self._revision = revision
            log.info("knowledge-base revision %d: %d FAQ entries installed", revision, len(rows))
            return True

    def start(self) -> None:
        """Poll at once and then every ``interval_s``, in a daemon thread, until :meth:`stop` (a database that does
        not answer delays the first FAQ entries, never the caller)."""
        self._thread = threading.Thread(target=self._run, name="kefu-faq-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # nothing may end the thread: the next change may fix it
                log.exception("installing the knowledge-base FAQ failed")
            self._stop.wait(self._interval_s)

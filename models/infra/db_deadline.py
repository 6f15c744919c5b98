"""A client-side deadline on every PostgreSQL round trip: a server that never answers costs a bounded time.

PostgreSQL's ``statement_timeout`` is enforced by the server, and TCP keepalives only notice a peer that stops
acknowledging; a black-holed or hung server (or a proxy in between that still acknowledges) leaves a psycopg
call waiting for ever. :func:`install` arms a deadline before each statement, commit, rollback and pool reset
and disarms it when the call returns; one watchdog thread shuts down the socket of a connection whose
deadline passed. The waiting call then fails at once with ``psycopg.OperationalError`` (SQLAlchemy's
``OperationalError``, a disconnect: the pool discards that connection), which the caller turns into its own
error (the gateway: a 503). Connecting is bounded separately by libpq's ``connect_timeout``.

After a cut or a connect timeout the engine fails fast for ``retry_after_s``: connecting and executing raise
:class:`DatabaseUnavailable` at once, so concurrent requests do not each wait the full deadline for the same
dead server (16 concurrent POSTs got their 503 after 2 to 8.6 s without it, all queued behind 4 threads); the
first call after that tries the server again. A refused connection or a plain disconnect does not trip it.

Only engines that ask for it get a deadline (the gateway); a deadline never applies between calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import SQLAlchemyError

from models.infra.breaker import Breaker

log = logging.getLogger(__name__)

_SCAN_S = 0.1
_CONNECT_TIMEOUT = "timeout expired"  # psycopg's message when connect_timeout passed


class DatabaseUnavailable(ConnectionError):
    """Not attempted: the database did not answer a moment ago (see :class:`~models.infra.breaker.Breaker`)."""


class Watchdog:
    """Cuts the socket of any armed connection whose deadline passed; one thread per process, idle when unarmed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, Any, Breaker]] = {}  # id(dbapi connection) → (deadline, conn, breaker)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self, dbapi_conn: Any, seconds: float, breaker: Breaker) -> None:
        with self._lock:
            self._armed[id(dbapi_conn)] = (time.monotonic() + seconds, dbapi_conn, breaker)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kefu-db-deadline", daemon=True)
                self._thread.start()
        self._wake.set()

    def disarm(self, dbapi_conn: Any) -> None:
        with self._lock:
            self._armed.pop(id(dbapi_conn), None)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(_SCAN_S)
            now = time.monotonic()
            with self._lock:
                expired = [(conn, breaker) for deadline, conn, breaker in self._armed.values() if deadline <= now]
                for conn, _ in expired:
                    del self._armed[id(conn)]
                if not self._armed:
                    self._wake.clear()
            for conn, breaker in expired:
                breaker.trip()
                _cut(conn)


def _cut(dbapi_conn: Any) -> None:
    """Shut the connection's socket down under the call waiting on it (a dup of the descriptor: same socket)."""
    try:
        fd = dbapi_conn.pgconn.socket
    except Exception:  # already closed
        return
    log.warning("database: no answer within the deadline; connection cut")
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


def _dbapi(conn: Connection) -> Any:
    """The psycopg connection under a SQLAlchemy one; None once it was invalidated or closed."""
    if conn.invalidated or conn.closed:
        return None
    try:
        return conn.connection.dbapi_connection
    except SQLAlchemyError:
        return None


WATCHDOG = Watchdog()


def install(engine: Engine, seconds: float, retry_after_s: float, watchdog: Watchdog = WATCHDOG) -> None:
    """Give every round trip of ``engine`` (statements, commit, rollback, the pool's reset) ``seconds`` to answer,
    and fail fast for ``retry_after_s`` after one did not (or a connect timed out)."""
    breaker = Breaker(retry_after_s, DatabaseUnavailable, "the database did not answer a moment ago; not trying again yet")

    def arm_conn(conn: Any, *_: Any) -> None:
        dbapi = _dbapi(conn)
        if dbapi is not None:
            watchdog.arm(dbapi, seconds, breaker)

    def before_execute(conn: Any, *_: Any) -> None:
        breaker.check()
        arm_conn(conn)

    def before_connect(*_: Any) -> None:
        breaker.check()

    def disarm_conn(conn: Any, *_: Any) -> None:
        dbapi = _dbapi(conn)
        if dbapi is not None:
            watchdog.disarm(dbapi)

    def arm_dbapi(dbapi_conn: Any, *_: Any) -> None:
        watchdog.arm(dbapi_conn, seconds, breaker)

    def disarm_dbapi(dbapi_conn: Any, *_: Any) -> None:
        if dbapi_conn is not None:
            watchdog.disarm(dbapi_conn)

    def disarm_failed(context: Any) -> None:
        if _CONNECT_TIMEOUT in str(context.original_exception):
            breaker.trip()
        dbapi = _dbapi(context.connection) if context.connection is not None else None
        if dbapi is not None:
            watchdog.disarm(dbapi)

    event.listen(engine, "do_connect", before_connect)
    event.listen(engine, "before_cursor_execute", before_execute)
    event.listen(engine, "after_cursor_execute", disarm_conn)
    event.listen(engine, "handle_error", disarm_failed)
    event.listen(engine, "commit", arm_conn)  # disarmed by the next begin or the checkin that follows
    event.listen(engine, "rollback", arm_conn)
    event.listen(engine, "begin", disarm_conn)
    event.listen(engine, "reset", arm_dbapi)  # the pool's rollback on return; checkin follows it
    event.listen(engine, "checkin", disarm_dbapi)
    event.listen(engine, "close", disarm_dbapi)
    event.listen(engine, "invalidate", disarm_dbapi)

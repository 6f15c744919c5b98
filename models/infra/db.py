"""Engine and session factory: PostgreSQL through psycopg 3, SQLite for the embedded default.

Every connection carries a statement timeout (PostgreSQL ``statement_timeout`` and ``lock_timeout``, SQLite
``busy_timeout``) so no SQL call can hang a gateway or a worker. PostgreSQL connections also have a connect
timeout (``KEFU_DB_CONNECT_TIMEOUT_S``), TCP keepalives and ``tcp_user_timeout`` (a peer that vanished is
noticed), and a bounded wait for a pooled connection. An engine made with ``response_timeout_s`` (the
gateway's, ``KEFU_DB_RESPONSE_TIMEOUT_S``) also cuts a connection whose server does not answer a round trip
in time (:mod:`models.infra.db_deadline`): a black-holed database raises ``OperationalError`` within that
time instead of hanging the request. SQLite runs in WAL mode with foreign keys on, so a gateway and workers in
separate processes can share the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from models.infra import db_deadline
from models.settings import Settings
from models.tables import Base


def make_engine(settings: Settings, url: str | None = None, *, pre_ping: bool = True,
                response_timeout_s: float | None = None) -> Engine:
    """``response_timeout_s``: the longest any PostgreSQL round trip may wait for the server (also its
    ``statement_timeout`` when shorter); None: only the server-side ``KEFU_SQL_STATEMENT_TIMEOUT_MS``."""
    url = url or settings.effective_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": settings.sql_statement_timeout_ms / 1000},
            hide_parameters=True,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(settings.sql_statement_timeout_ms)}")
            cur.close()

        return engine
    # pre_ping costs a round trip per transaction. The gateway turns it off: a connection broken by a
    # database restart fails one request (503, the platform retries) and SQLAlchemy refreshes the pool.
    statement_ms = int(settings.sql_statement_timeout_ms)
    if response_timeout_s is not None:
        statement_ms = min(statement_ms, int(response_timeout_s * 1000))
    engine = create_engine(
        url,
        hide_parameters=True,  # a failed statement's error (logged) must never carry a customer's message text
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        pool_size=10,
        max_overflow=20,
        pool_timeout=settings.db_connect_timeout_s + (response_timeout_s or 0) + 1,
        connect_args={
            "connect_timeout": settings.db_connect_timeout_s,
            "options": f"-c statement_timeout={statement_ms} -c lock_timeout={statement_ms}",
            # a peer that vanished (no RST) is noticed: unacknowledged data, then idle probes
            "tcp_user_timeout": max(statement_ms, 10_000),
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        },
    )
    if response_timeout_s is not None:
        db_deadline.install(engine, response_timeout_s, settings.db_retry_after_s)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


@lru_cache(maxsize=64)
def _conflict_insert(dialect: str, table: Table, conflict: tuple[str, ...], on_conflict: str) -> Any:
    """Built once per table: the statement is compiled and cached, only the parameters change."""
    module: Any = {"postgresql": postgresql, "sqlite": sqlite}.get(dialect)
    if module is None:  # pragma: no cover - only the two supported databases
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    stmt = module.insert(table)
    if on_conflict == "nothing":
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    else:  # a no-op update, so that RETURNING yields the existing row's id
        stmt = stmt.on_conflict_do_update(index_elements=list(conflict), set_={conflict[0]: stmt.excluded[conflict[0]]})
    return stmt.returning(table.c.id)


def insert_ignoring_conflict(
    session: Session, table: type[Base], values: Mapping[str, Any], conflict: list[str]
) -> int | None:
    """INSERT … ON CONFLICT (conflict) DO NOTHING RETURNING id; None when the row already existed.

    The database decides who wins, so concurrent duplicates cannot both insert.
    """
    stmt = _conflict_insert(session.get_bind().dialect.name, table.__table__, tuple(conflict), "nothing")
    row = session.execute(stmt, dict(values)).first()
    return None if row is None else int(row[0])


def upsert_returning_id(
    session: Session, table: type[Base], values: Mapping[str, Any], conflict: list[str]
) -> int:
    """INSERT … ON CONFLICT (conflict) DO UPDATE (a no-op) RETURNING id: the row's id in one round trip."""
    stmt = _conflict_insert(session.get_bind().dialect.name, table.__table__, tuple(conflict), "update")
    return int(session.execute(stmt, dict(values)).scalar_one())


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))

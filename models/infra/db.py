"""Engine and session factory: PostgreSQL through psycopg 3, SQLite for the embedded default.

Every connection carries a statement timeout (PostgreSQL ``statement_timeout``, SQLite
``busy_timeout``) so no SQL call can hang a gateway or a worker. SQLite runs in WAL mode with
foreign keys on, so a gateway and workers in separate processes can share the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from models.settings import Settings
from models.tables import Base


def make_engine(settings: Settings, url: str | None = None, *, pre_ping: bool = True) -> Engine:
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
    return create_engine(
        url,
        hide_parameters=True,  # a failed statement's error (logged) must never carry a customer's message text
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        pool_size=10,
        max_overflow=20,
        pool_timeout=10,
        connect_args={
            "connect_timeout": 5,
            "options": f"-c statement_timeout={int(settings.sql_statement_timeout_ms)}",
        },
    )


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

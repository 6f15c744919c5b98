"""Migrations upgrade an empty PostgreSQL and SQLite database to head and back down to nothing; migration 0005
seals an audit log that already has rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from models import audit
from models.audit_verify import verify
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import downgrade, upgrade
from models.settings import Settings
from models.tables import Base
from tests import services

TABLES = {"conversation", "inbound", "reply", "delivery", "audit_event", "audit_chain", "kf_cursor",
          "kb_document", "kb_passage", "kb_faq", "kb_state", "agent", "agent_session", "conversation_note",
          "conversation_tag", "canned_reply", "csat", "api_key", "api_request"}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path)
        return
    services.ensure_postgres()
    name, url = services.create_database()
    try:
        yield Settings(data_dir=tmp_path, database_url=url)
    finally:
        services.drop_database(name)


def tables(settings: Settings) -> set[str]:
    engine = make_engine(settings)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_to_head_and_back_to_base(empty_db: Settings) -> None:
    assert tables(empty_db) == set()
    upgrade(empty_db)
    assert tables(empty_db) == TABLES
    engine = make_engine(empty_db)
    try:
        inspector = inspect(engine)
        for table in Base.metadata.sorted_tables:  # the migration matches the models, column for column
            assert {c["name"] for c in inspector.get_columns(table.name)} == set(table.columns.keys())
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("inbound")}
        assert ("channel", "account", "external_id") in uniques
        assert ("inbound_id",) in {tuple(u["column_names"]) for u in inspector.get_unique_constraints("reply")}
        assert ("account", "open_kfid") in {tuple(u["column_names"]) for u in inspector.get_unique_constraints("kf_cursor")}
        assert {("name",), ("key_hash",)} <= {tuple(u["column_names"]) for u in inspector.get_unique_constraints("api_key")}
    finally:
        engine.dispose()
    downgrade(empty_db, "base", drop_audit_log=True)
    assert tables(empty_db) == set()
    upgrade(empty_db)  # and up again: the downgrade left nothing behind that blocks it
    assert tables(empty_db) == TABLES


def test_audit_log_is_append_only(empty_db: Settings) -> None:
    upgrade(empty_db)
    engine = make_engine(empty_db)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO audit_event (at, kind, detail) VALUES (CURRENT_TIMESTAMP, 'received', '{}')"))
        for statement in ("UPDATE audit_event SET kind = 'forged'", "DELETE FROM audit_event"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT kind FROM audit_event")).scalars().all() == ["received"]
    finally:
        engine.dispose()


def test_a_downgrade_that_would_drop_the_audit_log_is_refused(empty_db: Settings, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from models.infra.migrate import AuditLossRefused, audit_rows_dropped_by
    from workers.cli import main

    upgrade(empty_db)
    engine = make_engine(empty_db)
    with transaction(make_session_factory(engine)) as session:
        audit.record(session, audit.RECEIVED, channel="web")
    engine.dispose()
    assert audit_rows_dropped_by(empty_db, "0001") is None  # the first revision keeps the table
    assert audit_rows_dropped_by(empty_db, "base") == 1
    assert audit_rows_dropped_by(empty_db, "-9") == 1
    with pytest.raises(AuditLossRefused, match=r"drops the append-only audit log \(1 rows\)"):
        downgrade(empty_db, "base")
    assert audit_rows_dropped_by(empty_db, "base") == 1  # nothing was dropped

    for name, value in (("KEFU_DATA_DIR", str(empty_db.data_dir)), ("KEFU_DATABASE_URL", empty_db.database_url)):
        if value is not None:
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("KEFU_SECRET_KEY", "k")
    assert main(["downgrade", "base"]) == 2
    assert "refused" in capsys.readouterr().err
    assert main(["downgrade", "base", "--drop-audit-log"]) == 0
    assert "warning: the append-only audit log (1 rows) was dropped" in capsys.readouterr().err
    assert audit_rows_dropped_by(empty_db, "base") is None  # at base: nothing left to drop


LEGACY = [  # written the way any past Kefu or an operator's tool may have: odd spacing, non-ASCII, a zone offset
    ("2026-01-01 08:00:00.000001+08:00", "received", '{"a":  1, "城市": "上海"}'),
    ("2026-01-01 00:00:00+00:00", "queued", "{}"),
    ("2026-01-02 23:59:59.999999+00:00", "delivered", '{"n": [1.50, null, true]}'),
]


def test_existing_rows_are_sealed_and_0005_goes_down_and_up(empty_db: Settings) -> None:
    """Rows written before 0005 become the start of chain 0, new rows chain on, and 0005 goes down (keeping the
    append-only triggers) and up again."""
    upgrade(empty_db, "0004")
    engine = make_engine(empty_db)
    try:
        sqlite = engine.dialect.name == "sqlite"
        with engine.begin() as conn:
            for at, kind, detail in LEGACY:
                if sqlite:  # SQLite keeps UTC as text without a zone, the way SQLAlchemy writes it
                    at = datetime.fromisoformat(at).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                conn.execute(text("INSERT INTO audit_event (at, kind, detail) VALUES (:at, :kind, :detail)"),
                             {"at": at, "kind": kind, "detail": detail})
        upgrade(empty_db)
        with engine.connect() as conn:
            sealed = conn.execute(text("SELECT chain, seq FROM audit_event ORDER BY id")).all()
        assert [tuple(r) for r in sealed] == [(0, 1), (0, 2), (0, 3)]
        with transaction(make_session_factory(engine)) as session:
            audit.record(session, audit.RECEIVED, channel="web", conversation_id=1, chars=12)
        report = verify(engine)
        assert report.clean, report.findings
        assert report.rows == 4

        downgrade(empty_db, "0004")
        columns = {c["name"] for c in inspect(engine).get_columns("audit_event")}
        assert not columns & {"chain", "seq", "prev_hash", "hash"}
        assert "audit_chain" not in inspect(engine).get_table_names()
        for statement in ("UPDATE audit_event SET kind = 'forged'", "DELETE FROM audit_event"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement))

        upgrade(empty_db)  # and up again: all four rows sealed afresh, in id order
        report = verify(engine)
        assert report.clean and report.rows == 4
        assert report.heads[0][0] == 4
    finally:
        engine.dispose()

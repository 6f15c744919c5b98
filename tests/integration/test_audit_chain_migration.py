"""Migration 0005 on a log that already has rows: they are sealed as the start of chain 0, new rows chain on,
and 0005 goes down and up again with the append-only triggers intact (PostgreSQL and SQLite)."""

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
from tests import services

LEGACY = [  # written the way any past Kefu or an operator's tool may have: odd spacing, non-ASCII, a zone offset
    ("2026-01-01 08:00:00.000001+08:00", "received", '{"a":  1, "城市": "上海"}'),
    ("2026-01-01 00:00:00+00:00", "queued", "{}"),
    ("2026-01-02 23:59:59.999999+00:00", "delivered", '{"n": [1.50, null, true]}'),
]


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path)
        return
    services.ensure_postgres()
    name, url = services.create_database()
    try:
        yield Settings(data_dir=tmp_path, database_url=url)
    finally:
        services.drop_database(name)


def test_existing_rows_are_sealed_and_0005_goes_down_and_up(settings: Settings) -> None:
    upgrade(settings, "0004")
    engine = make_engine(settings)
    try:
        sqlite = engine.dialect.name == "sqlite"
        with engine.begin() as conn:
            for at, kind, detail in LEGACY:
                if sqlite:  # SQLite keeps UTC as text without a zone, the way SQLAlchemy writes it
                    at = datetime.fromisoformat(at).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                conn.execute(text("INSERT INTO audit_event (at, kind, detail) VALUES (:at, :kind, :detail)"),
                             {"at": at, "kind": kind, "detail": detail})
        upgrade(settings)
        with engine.connect() as conn:
            sealed = conn.execute(text("SELECT chain, seq FROM audit_event ORDER BY id")).all()
        assert [tuple(r) for r in sealed] == [(0, 1), (0, 2), (0, 3)]
        with transaction(make_session_factory(engine)) as session:
            audit.record(session, audit.RECEIVED, channel="web", conversation_id=1, chars=12)
        report = verify(engine)
        assert report.clean, report.findings
        assert report.rows == 4

        downgrade(settings, "0004")
        columns = {c["name"] for c in inspect(engine).get_columns("audit_event")}
        assert not columns & {"chain", "seq", "prev_hash", "hash"}
        assert "audit_chain" not in inspect(engine).get_table_names()
        for statement in ("UPDATE audit_event SET kind = 'forged'", "DELETE FROM audit_event"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(text(statement))

        upgrade(settings)  # and up again: all four rows sealed afresh, in id order
        report = verify(engine)
        assert report.clean and report.rows == 4
        assert report.heads[0][0] == 4
    finally:
        engine.dispose()

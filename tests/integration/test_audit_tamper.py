"""Tampering with the audit log behind Kefu's back, as a database superuser, and `kefu audit verify` finding it.

Each case builds a chained log through ``models.audit.record`` (PostgreSQL: the trigger chains; SQLite:
Python), checks that ``kefu audit verify`` calls it clean (exit 0), tampers with the triggers off
(PostgreSQL ``session_replication_role = replica``, which only a superuser may set; SQLite: the
triggers dropped), and checks that verify exits 1 naming the chain and the row where it breaks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, Text, cast, select, text

from models import audit
from models.audit_chain import row_hash
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import AuditEvent
from tests import services
from workers.cli import main


@dataclass
class Log:
    settings: Settings
    engine: Engine
    chain: int  # the chain the cases tamper with, and its rows' ids in seq order
    ids: list[int]


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Log]:
    name = None
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path)
    else:
        services.ensure_postgres()
        name, url = services.create_database()  # as the superuser postgres: the tamperer
        settings = Settings(data_dir=tmp_path, database_url=url)
    upgrade(settings)
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    for conversation in range(8):  # 8 transactions of 4 rows: on PostgreSQL each lands in one chain
        with transaction(sessions) as session:
            for step in range(4):
                audit.record(session, audit.RECEIVED if step == 0 else audit.QUEUED, channel="web",
                             conversation_id=conversation, inbound_id=conversation * 10 + step, step=step)
    with engine.connect() as conn:
        chain = conn.execute(text("SELECT chain FROM audit_event GROUP BY chain ORDER BY count(*) DESC, chain "
                                  "LIMIT 1")).scalar_one()
        ids = list(conn.execute(text("SELECT id FROM audit_event WHERE chain = :c ORDER BY seq"), {"c": chain}).scalars())
    monkeypatch.setenv("KEFU_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KEFU_SECRET_KEY", "k")
    if settings.database_url:
        monkeypatch.setenv("KEFU_DATABASE_URL", settings.database_url)
    try:
        yield Log(settings, engine, chain, ids)
    finally:
        engine.dispose()
        if name:
            services.drop_database(name)


def behind_kefus_back(log: Log, *statements: str, **params: object) -> None:
    """Run statements with the append-only and chain triggers out of the way, as an attacker with full rights."""
    with log.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_event_no_update"))
            conn.execute(text("DROP TRIGGER IF EXISTS audit_event_no_delete"))
        for statement in statements:
            conn.execute(text(statement), params)
        if conn.dialect.name == "sqlite":  # and the triggers back, so that only the rows tell
            for verb in ("UPDATE", "DELETE"):
                conn.execute(text(f"CREATE TRIGGER audit_event_no_{verb.lower()} BEFORE {verb} ON audit_event "
                                  f"BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: {verb} is not allowed'); END"))


def edit(log: Log) -> int:
    behind_kefus_back(log, "UPDATE audit_event SET detail = '{\"step\": 99}' WHERE id = :id", id=log.ids[1])
    return log.ids[1]


def delete_middle(log: Log) -> int:
    behind_kefus_back(log, "DELETE FROM audit_event WHERE id = :id", id=log.ids[1])
    return log.ids[2]  # the row after the gap is where the chain breaks


def swap_content(log: Log) -> int:
    a, b = log.ids[1], log.ids[2]  # each keeps its place and hash, with the other's content
    with log.engine.connect() as conn:
        (ia, da), (ib, db) = (conn.execute(text("SELECT inbound_id, CAST(detail AS TEXT) FROM audit_event "
                                                "WHERE id = :id"), {"id": id_}).one() for id_ in (a, b))
    behind_kefus_back(log, "UPDATE audit_event SET inbound_id = :ib, detail = :db WHERE id = :a",
                      "UPDATE audit_event SET inbound_id = :ia, detail = :da WHERE id = :b",
                      a=a, b=b, ia=ia, ib=ib, da=da, db=db)
    return a


def reorder(log: Log) -> int:
    a, b = log.ids[1], log.ids[2]  # seq 2 and 3 trade places
    behind_kefus_back(log, "UPDATE audit_event SET seq = -seq WHERE id IN (:a, :b)",
                      "UPDATE audit_event SET seq = -seq + 1 WHERE id = :a",
                      "UPDATE audit_event SET seq = -seq - 1 WHERE id = :b", a=a, b=b)
    return b  # now at seq 2, it does not follow seq 1


def forge_with_made_up_hash(log: Log) -> int:
    with log.engine.connect() as conn:
        head = conn.execute(text("SELECT seq, hash FROM audit_chain WHERE chain = :c"), {"c": log.chain}).one()
    behind_kefus_back(log, "INSERT INTO audit_event (id, at, kind, channel, detail, chain, seq, prev_hash, hash) "
                           "VALUES (900, CURRENT_TIMESTAMP, 'delivered', 'web', '{}', :c, :seq, :prev, :hash)",
                      "UPDATE audit_chain SET seq = :seq, hash = :hash WHERE chain = :c",
                      c=log.chain, seq=head.seq + 1, prev=head.hash, hash="f" * 64)
    return 900


def append_past_the_head(log: Log) -> int:
    """A row with a correct hash, computed the way Kefu does, but the head left alone."""
    with log.engine.connect() as conn:
        head = conn.execute(text("SELECT seq, hash FROM audit_chain WHERE chain = :c"), {"c": log.chain}).one()
    at = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    hash_ = row_hash(head.hash, 902, log.chain, head.seq + 1, at, "delivered", "web", None, None, None, "{}")
    stamp = at.strftime("%Y-%m-%d %H:%M:%S.%f") + ("" if log.engine.dialect.name == "sqlite" else "+00")
    behind_kefus_back(log, "INSERT INTO audit_event (id, at, kind, channel, detail, chain, seq, prev_hash, hash) "
                           "VALUES (902, :at, 'delivered', 'web', '{}', :c, :seq, :prev, :hash)",
                      at=stamp, c=log.chain, seq=head.seq + 1, prev=head.hash, hash=hash_)
    return 902


def forge_without_chain(log: Log) -> int:
    behind_kefus_back(log, "INSERT INTO audit_event (id, at, kind, channel, detail) "
                           "VALUES (901, CURRENT_TIMESTAMP, 'delivered', 'web', '{}')")
    return 901


def delete_tail(log: Log) -> int:
    behind_kefus_back(log, "DELETE FROM audit_event WHERE id = :id", id=log.ids[-1])
    return log.ids[-2]  # the chain now ends here, short of its head


CASES: dict[str, tuple[Callable[[Log], int], str]] = {
    "edited": (edit, "the content does not match its hash"),
    "deleted in the middle": (delete_middle, "seq 2 missing after row id"),
    "content swapped": (swap_content, "the content does not match its hash"),
    "reordered": (reorder, "does not follow the row before it"),
    "forged with a made-up hash": (forge_with_made_up_hash, "forged with a made-up hash"),
    "forged without a chain": (forge_without_chain, "no chain position"),
    "appended past the head": (append_past_the_head, "lies past the chain's head"),
    "tail deleted": (delete_tail, "row(s) were deleted"),
}


@pytest.mark.parametrize("case", CASES)
def test_verify_finds_each_tampering_and_says_where(log: Log, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert len(log.ids) >= 4
    assert main(["audit", "verify"]) == 0
    assert ": clean" in capsys.readouterr().out
    tamper, problem = CASES[case]
    where = tamper(log)
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("TAMPERED"))
    assert re.search(rf"at row id {where}( \(seq \d+\))?: ", first) and problem in first, out
    assert "None" not in out, out
    assert "in 1 chain(s)" in out, out  # only the chain that was touched


def test_a_consistent_rewrite_is_found_only_against_anchors(log: Log, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A superuser who re-hashes what they changed (and the head) leaves a chain that verifies: documented,
    and the reason for anchors kept outside the database."""
    anchors = tmp_path / "anchors.json"
    assert main(["audit", "verify", "--anchors", str(anchors)]) == 0
    assert anchors.exists()
    last = log.ids[-1]
    with log.engine.connect() as conn:
        old = conn.execute(select(AuditEvent.prev_hash, AuditEvent.seq, AuditEvent.at, AuditEvent.kind,
                                  AuditEvent.conversation_id, AuditEvent.inbound_id,
                                  cast(AuditEvent.detail, Text)).where(AuditEvent.id == last)).one()
    forged_detail = old[-1].replace("3", "7")
    forged_hash = row_hash(old.prev_hash, last, log.chain, old.seq, old.at, old.kind, "web", old.conversation_id,
                           old.inbound_id, None, forged_detail)
    behind_kefus_back(log, "UPDATE audit_event SET detail = :d, hash = :h WHERE id = :id",
                      "UPDATE audit_chain SET hash = :h WHERE chain = :c",
                      d=forged_detail, h=forged_hash, id=last, c=log.chain)
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0  # re-hashed consistently: the chain alone cannot tell
    assert main(["audit", "verify", "--anchors", str(anchors)]) == 1
    out = capsys.readouterr().out
    assert f"chain {log.chain} at row id {last} " in out and "differs from the anchor recorded earlier" in out, out


def test_verify_reads_one_snapshot_while_kefu_keeps_writing(log: Log, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row appended between reading the chains' heads and their rows must not look like a forgery."""
    from models import audit_verify

    read_heads = audit_verify._read_heads

    def heads_then_a_write(conn: Connection) -> dict[int, tuple[int, str]]:
        heads = read_heads(conn)
        with transaction(make_session_factory(log.engine)) as session:
            audit.record(session, audit.DELIVERED, channel="web", conversation_id=1)
        return heads

    monkeypatch.setattr(audit_verify, "_read_heads", heads_then_a_write)
    report = audit_verify.verify(log.engine)
    assert report.clean, report.findings
    assert report.rows == 32  # the snapshot's rows, not the one written meanwhile
    monkeypatch.undo()
    assert audit_verify.verify(log.engine).rows == 33


def test_a_guard_switched_off_is_reported(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows alone show a disabled trigger only once something was written meanwhile; verify checks the guards."""
    with log.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_event DISABLE TRIGGER audit_event_chain"))
            expected = "guard: the trigger audit_event_chain is disabled"
        else:
            conn.execute(text("DROP TRIGGER audit_event_no_delete"))
            expected = "guard: the trigger audit_event_no_delete is missing"
    assert main(["audit", "verify"]) == 1
    captured = capsys.readouterr()
    assert f"TAMPERED {expected}" in captured.out, captured.out
    assert "1 problem(s)\n" in captured.out  # no chain is broken
    if log.engine.dialect.name == "postgresql":  # the tests connect as the superuser
        assert "warning: connected as the audit log's owner or a superuser" in captured.err


def test_a_tail_deleted_with_its_head_moved_back_is_found_only_against_anchors(
        log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    anchors = tmp_path / "anchors.json"
    assert main(["audit", "verify", "--anchors", str(anchors)]) == 0
    with log.engine.connect() as conn:
        new_end = conn.execute(select(AuditEvent.seq, AuditEvent.hash).where(AuditEvent.id == log.ids[-2])).one()
    behind_kefus_back(log, "DELETE FROM audit_event WHERE id = :id",
                      "UPDATE audit_chain SET seq = :seq, hash = :h WHERE chain = :c",
                      id=log.ids[-1], seq=new_end.seq, h=new_end.hash, c=log.chain)
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0  # a shorter chain that ends at its head: the chain alone cannot tell
    assert main(["audit", "verify", "--anchors", str(anchors)]) == 1
    out = capsys.readouterr().out
    assert f"chain {log.chain} at row id {log.ids[-2]} " in out and "before the anchor recorded earlier" in out, out


def test_no_chain_yet_or_an_unreadable_anchors_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings, "0004")
    monkeypatch.setenv("KEFU_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KEFU_SECRET_KEY", "k")
    assert main(["audit", "verify"]) == 2
    assert "run `kefu migrate`" in capsys.readouterr().err
    upgrade(settings)
    anchors = tmp_path / "anchors.json"
    anchors.write_text('{"heads": {}}')
    assert main(["audit", "verify", "--anchors", str(anchors)]) == 2
    assert "not an anchors file" in capsys.readouterr().err
    assert anchors.read_text() == '{"heads": {}}'  # left as it was

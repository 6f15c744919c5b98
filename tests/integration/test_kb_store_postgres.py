"""The knowledge-base store on PostgreSQL: versions and audit rows as on SQLite (tests/unit/test_kb_store.py), the
audit chain verifies, and two imports of the same new file at once make one document (the kb_state row's lock),
not a unique-constraint error or two versions of the same content."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from models.audit_verify import verify
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.knowledge import approved, readers, store
from models.settings import Settings
from models.states import ReplySource
from models.tables import AuditEvent, ConversationRecord, InboundRecord, KbDocumentRecord, ReplyRecord
from tests import services


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Engine]:
    services.ensure_postgres()
    name, url = services.create_database()
    settings = Settings(data_dir=tmp_path, database_url=url)
    upgrade(settings)
    engine = make_engine(settings)
    try:
        yield engine
    finally:
        engine.dispose()
        services.drop_database(name)


def test_versions_and_audit_on_postgresql(pg: Engine, tmp_path: Path) -> None:
    sessions = make_session_factory(pg)
    path = tmp_path / "faq.csv"
    path.write_text("问题,相似问,答案\n几点发货,什么时候发货,24 小时内。\n")
    statuses = []
    for content in (None, None, "问题,答案\n几点发货,当天。\n"):
        if content is not None:
            path.write_text(content)
        with transaction(sessions) as session:
            statuses.append(store.import_document(session, readers.read(path)))
    assert [(o.status, o.document.version) for o in statuses] == [("new", 1), ("unchanged", 1), ("updated", 2)]
    with sessions() as session:
        snap = store.snapshot(session)
        assert [(f.question, f.similar, f.answer) for f in snap.faq] == [("几点发货", (), "当天。")]
        assert snap.revision == 2
    with transaction(sessions) as session:
        assert store.delete_document(session, statuses[0].document.id) is not None
    with sessions() as session:
        kinds = session.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)).all()
    assert kinds == ["kb_imported", "kb_imported", "kb_deleted"]
    assert verify(pg).clean


def test_two_imports_of_one_new_file_at_once_make_one_document(pg: Engine, tmp_path: Path) -> None:
    sessions = make_session_factory(pg)
    (tmp_path / "returns.md").write_text("# 退货\n\n七天无理由退货。\n")
    parsed = readers.read(tmp_path / "returns.md")
    start = threading.Barrier(2)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            with transaction(sessions) as session:
                outcomes.append(store.import_document(session, parsed).status)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and sorted(outcomes) == ["new", "unchanged"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(KbDocumentRecord)) == 1
        assert store.revision(session) == 1


def test_an_approved_answer_deleted_as_a_document_is_revoked_and_a_sheet_over_it_warns(pg: Engine,
                                                                                        tmp_path: Path) -> None:
    """The approved-answer paths of ``kefu kb delete`` / ``import`` on PostgreSQL: the overlap warning is read after
    the sheet's commit, the deletion audits ``answer_revoked`` beside ``kb_deleted``, and the audit chain verifies."""
    sessions = make_session_factory(pg)
    with transaction(sessions) as session:
        conversation = ConversationRecord(channel="web", account="default", peer="v1")
        session.add(conversation)
        session.flush()
        inbound = InboundRecord(conversation_id=conversation.id, channel="web", account="default", external_id="m1",
                                text="退货以后退款多久能到账？")
        session.add(inbound)
        session.flush()
        reply = ReplyRecord(inbound_id=inbound.id, conversation_id=conversation.id, text="三到五个工作日。",
                            source=ReplySource.MODEL)
        session.add(reply)
        session.flush()
        reply_id = reply.id
    with transaction(sessions) as session:
        document_id = approved.approve(session, reply_id).answer.document_id
    sheet = tmp_path / "faq.csv"
    sheet.write_text("问题,答案\n退货以后退款多久能到账,验收后原路退回。\n几点发货,24 小时内。\n")
    with transaction(sessions) as session:
        sheet_id = store.import_document(session, readers.read(sheet)).document.id
    with sessions() as session:
        [warning] = approved.overlaps(session, sheet_id, Settings())
    assert f"approved answer of reply #{reply_id}" in warning
    with transaction(sessions) as session:
        deletion = approved.delete_document(session, document_id)
    assert deletion is not None and deletion.revoked is not None and deletion.revoked.reply_id == reply_id
    with sessions() as session:
        kinds = session.scalars(select(AuditEvent.kind).order_by(AuditEvent.id)).all()
        assert approved.approved(session) == []
    assert kinds[-2:] == ["kb_deleted", "answer_revoked"]
    assert verify(pg).clean

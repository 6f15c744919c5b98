"""The knowledge-base store and ``kefu kb`` on an embedded (SQLite) database: versions, idempotent re-import,
audit rows, exit codes and messages. (PostgreSQL: tests/integration/test_kb_grounding.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from models.audit_verify import verify
from models.infra.db import make_session_factory, transaction
from models.knowledge import readers, store
from models.tables import AuditEvent
from workers.cli import main


def audit_rows(engine: Engine) -> list[tuple[str, dict[str, object]]]:
    with make_session_factory(engine)() as session:
        return [(r.kind, r.detail) for r in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def kb(*args: str) -> int:
    return main(["kb", *args])


def test_import_unchanged_changed_and_delete_are_versioned_and_audited(db: Engine, clean_env: Path) -> None:
    sessions = make_session_factory(db)
    path = clean_env / "returns.md"
    path.write_text("# 退货\n\n七天无理由退货。\n")
    with transaction(sessions) as session:
        first = store.import_document(session, readers.read(path))
    with transaction(sessions) as session:
        again = store.import_document(session, readers.read(path))
    path.write_text("# 退货\n\n十五天无理由退货。\n\n## 运费\n\n本店承担。\n")
    with transaction(sessions) as session:
        changed = store.import_document(session, readers.read(path))
    assert (first.status, first.document.version, first.document.passages) == (store.NEW, 1, 1)
    assert (again.status, again.document.version) == (store.UNCHANGED, 1)
    assert (changed.status, changed.document.version, changed.document.passages) == (store.UPDATED, 2, 2)
    assert changed.document.id == first.document.id
    with sessions() as session:
        snap = store.snapshot(session)
        assert snap.revision == 2  # the unchanged import did not move it
        assert [p.text for p in snap.passages] == ["十五天无理由退货。", "本店承担。"]
        assert {p.title for p in snap.passages} == {"退货"}
    with transaction(sessions) as session:
        removed = store.delete_document(session, first.document.id)
    assert removed is not None and removed.passages == 2
    with sessions() as session:
        assert store.snapshot(session) == store.Snapshot(3, (), ())
        assert store.documents(session) == []
    doc_id = first.document.id
    assert audit_rows(db) == [
        ("kb_imported", {"document_id": doc_id, "version": 1, "status": "new", "passages": 1, "faq": 0,
                         "content_hash": first.document.content_hash, "kb_revision": 1}),
        ("kb_imported", {"document_id": doc_id, "version": 2, "status": "updated", "passages": 2, "faq": 0,
                         "content_hash": changed.document.content_hash, "kb_revision": 2}),
        ("kb_deleted", {"document_id": doc_id, "version": 2, "passages": 2, "faq": 0,
                        "content_hash": changed.document.content_hash, "kb_revision": 3}),
    ]
    assert verify(db).clean  # the audit rows are chained like every other


def test_faq_rows_round_trip_with_their_similar_questions(db: Engine, clean_env: Path) -> None:
    sessions = make_session_factory(db)
    (clean_env / "faq.csv").write_text("问题,相似问,答案\n几点发货,什么时候发货|多久发货,24 小时内。\n")
    with transaction(sessions) as session:
        outcome = store.import_document(session, readers.read(clean_env / "faq.csv"))
    with sessions() as session:
        found = store.document(session, outcome.document.id)
        snap = store.snapshot(session)
    assert found is not None
    info, passages, faq = found
    assert (info.faq, passages) == (1, [])
    assert [(f.question, f.similar, f.answer, f.title) for f in faq] == [("几点发货", ("什么时候发货", "多久发货"),
                                                                          "24 小时内。", "faq")]
    assert snap.faq == tuple(faq)


def test_kb_import_a_directory_lists_shows_and_deletes(db: Engine, clean_env: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = clean_env / "kb"
    (folder / "policies").mkdir(parents=True)
    (folder / "policies" / "returns.md").write_text("# 退货政策\n\n七天无理由退货。\n")
    (folder / "faq.csv").write_text("question,answer\n几点发货,24 小时内。\n")
    (folder / "notes.rtf").write_text("skipped: not a supported type")
    (folder / ".hidden.md").write_text("# skipped\n\nhidden\n")
    assert kb("import", str(folder)) == 0
    out = capsys.readouterr().out
    assert "new       #1 v1 faq.csv: 0 passages, 1 FAQ entries (faq)" in out
    assert "new       #2 v1 policies/returns.md: 1 passages, 0 FAQ entries (退货政策)" in out
    assert "2 of 2 files imported" in out
    assert kb("import", str(folder)) == 0
    assert capsys.readouterr().out.count("unchanged") == 2
    assert kb("list") == 0
    listing = capsys.readouterr().out
    assert "policies/returns.md — 退货政策" in listing and "2 documents, knowledge-base revision 2" in listing
    assert kb("show", "2") == 0
    assert "七天无理由退货。" in capsys.readouterr().out
    assert kb("delete", "2") == 0
    assert "deleted #2 policies/returns.md" in capsys.readouterr().out
    assert kb("show", "2") == 1
    assert capsys.readouterr().err.strip() == "kefu: no knowledge-base document #2"
    assert kb("delete", "2") == 1


def test_kb_import_names_each_bad_file_imports_the_rest_and_exits_1(db: Engine, clean_env: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (clean_env / "good.md").write_text("# 好\n\n内容。\n")
    (clean_env / "bad.pdf").write_bytes(b"not a pdf")
    assert kb("import", str(clean_env / "bad.pdf"), str(clean_env / "good.md"), str(clean_env / "gone.txt")) == 1
    captured = capsys.readouterr()
    assert f"kefu: cannot import {clean_env / 'bad.pdf'}: not a readable PDF" in captured.err
    assert f"kefu: cannot import {clean_env / 'gone.txt'}: No such file or directory" in captured.err
    assert "1 of 3 files imported; 2 could not be" in captured.err
    assert "new       #1 v1 good.md" in captured.out
    assert [kind for kind, _ in audit_rows(db)] == ["kb_imported"]


def test_kb_on_a_database_that_was_never_migrated_exits_2(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kb("list") == 2
    assert "has `kefu migrate` been run?" in capsys.readouterr().err


def test_the_audit_detail_holds_no_text(db: Engine, clean_env: Path) -> None:
    (clean_env / "secret.md").write_text("# 内部标题\n\n只在知识库里的句子。\n")
    assert kb("import", str(clean_env / "secret.md")) == 0
    stored = json.dumps(audit_rows(db), ensure_ascii=False)
    assert "内部" not in stored and "句子" not in stored and "secret.md" not in stored

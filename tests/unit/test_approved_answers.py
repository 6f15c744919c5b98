"""Approved answers (models.knowledge.approved) on the embedded (SQLite) database: approving a model answer stores it
in the knowledge base, audited and idempotent; what cannot be approved is refused with a reason; decide() answers a
paraphrase from it without the model; ``kefu answers``. Questions and answers are hand-written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from models.audit_verify import verify
from models.dialogue import Action, HandOff, Message, decide, faq_decision
from models.infra.db import make_session_factory, transaction
from models.knowledge import approved, faq_cache, store
from models.knowledge.faq import FaqEntry
from models.knowledge.faq_sync import FaqSync
from models.knowledge.fused_faq import WHY_FUSED
from models.settings import Settings
from models.states import ReplySource
from models.tables import AuditEvent, ConversationRecord, InboundRecord, ReplyRecord
from workers.cli import main

QUESTION = "退货以后退款多久能到账？"
ANSWER = "退货验收通过后，退款会在 3-5 个工作日内原路退回。"


@pytest.fixture
def sessions(db: Engine) -> Iterator[sessionmaker[Session]]:
    faq_cache.install(())
    yield make_session_factory(db)
    faq_cache.install(())


def exchange(sessions: sessionmaker[Session], question: str, answer: str,
             source: ReplySource = ReplySource.MODEL) -> int:
    """A customer's message and its stored reply; the reply's id."""
    with transaction(sessions) as session:
        conversation = session.scalar(select(ConversationRecord).where(ConversationRecord.peer == "v1"))
        if conversation is None:
            conversation = ConversationRecord(channel="web", account="default", peer="v1")
            session.add(conversation)
            session.flush()
        inbound = InboundRecord(conversation_id=conversation.id, channel="web", account="default",
                                external_id=f"m{question}{answer}"[:120], text=question)
        session.add(inbound)
        session.flush()
        reply = ReplyRecord(inbound_id=inbound.id, conversation_id=conversation.id, text=answer, source=source)
        session.add(reply)
        session.flush()
        return reply.id


def audit_rows(sessions: sessionmaker[Session]) -> list[tuple[str, int | None, dict[str, object]]]:
    with sessions() as session:
        return [(r.kind, r.reply_id, r.detail) for r in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_approving_stores_the_question_and_answer_in_the_knowledge_base_once(sessions: sessionmaker[Session]) -> None:
    reply_id = exchange(sessions, QUESTION, ANSWER)
    with transaction(sessions) as session:
        first = approved.approve(session, reply_id)
    with transaction(sessions) as session:
        again = approved.approve(session, reply_id)
    assert (first.status, again.status) == (store.NEW, store.UNCHANGED)
    assert (first.answer.question, first.answer.answer) == (QUESTION, ANSWER)
    with sessions() as session:
        assert store.revision(session) == 1  # the second approval wrote nothing
        assert [(a.reply_id, a.question, a.answer) for a in approved.approved(session)] == [(reply_id, QUESTION, ANSWER)]
        [entry] = [row.entry() for row in store.faq_rows(session)]
    assert (entry.id, entry.approved_reply, entry.question, entry.answer) == (
        f"approved:{reply_id}", reply_id, QUESTION, ANSWER)
    document_id = first.answer.document_id
    assert [(kind, rid) for kind, rid, _ in audit_rows(sessions)] == [("kb_imported", None),
                                                                        ("answer_approved", reply_id)]
    assert audit_rows(sessions)[1][2] == {"document_id": document_id, "status": "new", "by": "cli"}


def test_the_operator_may_word_the_question_and_a_new_wording_updates_it(sessions: sessionmaker[Session]) -> None:
    reply_id = exchange(sessions, QUESTION, ANSWER)
    with transaction(sessions) as session:
        approved.approve(session, reply_id)
    with transaction(sessions) as session:
        updated = approved.approve(session, reply_id, question="  退款几天到账  ")
    assert (updated.status, updated.answer.question) == (store.UPDATED, "退款几天到账")
    with sessions() as session:
        assert [a.question for a in approved.approved(session)] == ["退款几天到账"]


@pytest.mark.parametrize(("source", "answer", "question", "why"), [
    (ReplySource.FALLBACK, "抱歉，我暂时无法回答。", QUESTION, "is a fallback reply, not a model answer"),
    (ReplySource.FAQ, ANSWER, QUESTION, "is a faq reply, not a model answer"),
    (ReplySource.HANDOFF, "正在为您转接人工客服。", QUESTION, "is a handoff reply"),
    (ReplySource.MODEL, "已为您登记手机 138****1234 的退款。", QUESTION, "holds personal data"),
    (ReplySource.MODEL, "好的，已记下您的手机 13812345678。", QUESTION, "holds personal data"),
    (ReplySource.MODEL, ANSWER, "[voice]", "give the question (--question)"),
    (ReplySource.MODEL, ANSWER, "我的手机号是138****1234，退款多久到账", "question of reply"),
    (ReplySource.MODEL, ANSWER, "我的手机号是13812345678，退款多久到账", "question of reply"),
])
def test_what_cannot_be_approved_is_refused_with_a_reason(sessions: sessionmaker[Session], source: ReplySource,
                                                           answer: str, question: str, why: str) -> None:
    reply_id = exchange(sessions, question, answer, source)
    with transaction(sessions) as session, pytest.raises(approved.NotApprovable, match=re.escape(why)):
        approved.approve(session, reply_id)
    with transaction(sessions) as session, pytest.raises(approved.NotApprovable, match="no reply #999"):
        approved.approve(session, 999)
    with sessions() as session:
        assert store.revision(session) == 0
    assert audit_rows(sessions) == []


def test_decide_answers_a_paraphrase_from_an_approved_answer_until_revoked(sessions: sessionmaker[Session]) -> None:
    settings = Settings()
    reply_id = exchange(sessions, QUESTION, ANSWER)
    sync = FaqSync(sessions, settings, interval_s=60)
    assert sync.poll()
    assert decide(settings, Message("退款多久能到账"), HandOff.PERSON).action is Action.GENERATE
    with transaction(sessions) as session:
        approved.approve(session, reply_id)
    assert sync.poll()
    decision = decide(settings, Message("退货后退款几天能到账"), HandOff.PERSON)
    assert (decision.action, decision.why, decision.text, decision.source) == (
        Action.ANSWER, f"approved_answer:{reply_id}", ANSWER, ReplySource.APPROVED)
    assert decision.answer().why == f"approved_answer:{reply_id}"
    assert decide(settings, Message("你们的衣服起球吗"), HandOff.PERSON).action is Action.GENERATE
    with transaction(sessions) as session:
        revoked = approved.revoke(session, reply_id, by="admin-api")
    with transaction(sessions) as session:
        assert approved.revoke(session, reply_id) is None
    assert revoked is not None and revoked.reply_id == reply_id
    assert sync.poll()
    assert decide(settings, Message("退货后退款几天能到账"), HandOff.PERSON).action is Action.GENERATE
    assert [(kind, rid, detail.get("by")) for kind, rid, detail in audit_rows(sessions)] == [
        ("kb_imported", None, "cli"), ("answer_approved", reply_id, "cli"),
        ("kb_deleted", None, "admin-api"), ("answer_revoked", reply_id, "admin-api")]


def test_an_ordinary_faq_entry_still_answers_as_faq(sessions: sessionmaker[Session], clean_env: Path) -> None:
    sheet = clean_env / "faq.csv"
    sheet.write_text("问题,相似问,答案\n几点发货,什么时候发货,付款后 24 小时内发货。\n")
    assert main(["kb", "import", str(sheet)]) == 0
    settings = Settings()
    assert FaqSync(sessions, settings).poll()
    decision = decide(settings, Message("什么时候发货呀"), HandOff.PERSON)
    assert (decision.why, decision.source) == ("faq", ReplySource.FAQ)


def test_kefu_answers_approve_list_revoke(sessions: sessionmaker[Session], db: Engine,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    reply_id = exchange(sessions, QUESTION, ANSWER)
    fallback = exchange(sessions, "在吗", "抱歉，我暂时无法回答。", ReplySource.FALLBACK)
    assert main(["answers", "approve", str(reply_id)]) == 0
    assert f"approved reply #{reply_id}" in capsys.readouterr().out
    assert main(["answers", "approve", str(reply_id), "--question", "退款几天到账"]) == 0
    assert "updated" in capsys.readouterr().out
    assert main(["answers", "approve", str(fallback)]) == 1
    assert "not a model answer" in capsys.readouterr().err
    assert main(["answers", "list"]) == 0
    listed = capsys.readouterr().out
    assert f"#{reply_id}" in listed and "退款几天到账" in listed and "1 approved answer" in listed
    assert main(["answers", "revoke", str(reply_id)]) == 0
    assert f"revoked the approved answer of reply #{reply_id}" in capsys.readouterr().out
    assert main(["answers", "revoke", str(reply_id)]) == 1
    assert f"reply #{reply_id} has no approved answer" in capsys.readouterr().err
    assert verify(db).clean


def test_an_approved_answer_found_by_the_worker_s_fused_match_says_so_too() -> None:
    approved_entry = FaqEntry("approved:7", QUESTION, ANSWER)
    decision = faq_decision(approved_entry, WHY_FUSED)
    assert (decision.why, decision.source) == ("approved_answer:7", ReplySource.APPROVED)
    assert faq_decision(FaqEntry("kb:3", QUESTION, ANSWER), WHY_FUSED).why == WHY_FUSED


def test_a_question_the_knowledge_base_already_answers_is_not_approved_again(sessions: sessionmaker[Session],
                                                                             clean_env: Path) -> None:
    """Two entries for one question would cancel each other out (the index's margin): the second is refused,
    naming the first, until it is revoked or the question reworded; KEFU_FAQ's entries count too."""
    first = exchange(sessions, QUESTION, ANSWER)
    second = exchange(sessions, "退货后退款几天能到账", "一般三到五个工作日到账。")
    with transaction(sessions) as session:
        approved.approve(session, first)
    with transaction(sessions) as session, pytest.raises(
            approved.NotApprovable, match=f"already answered by the approved answer of reply #{first}"):
        approved.approve(session, second)
    with transaction(sessions) as session:
        assert approved.approve(session, first).status == store.UNCHANGED  # its own entry is no rival
        assert approved.approve(session, second, question="换货运费谁出").status == store.NEW
    settings = Settings(faq=[{"question": "几点发货", "similar": ["什么时候发货"], "answer": "24 小时内发货。"}])
    third = exchange(sessions, "什么时候能发货", "付款后尽快发货。")
    with transaction(sessions) as session, pytest.raises(approved.NotApprovable, match="KEFU_FAQ entry"):
        approved.approve(session, third, settings=settings)
    sheet = clean_env / "faq.csv"
    sheet.write_text("问题,相似问,答案\n几点发货,什么时候发货,付款后 24 小时内发货。\n")
    assert main(["kb", "import", str(sheet)]) == 0
    named = r"FAQ entry kb:\d+ of 'faq' \(document #\d+"
    with transaction(sessions) as session, pytest.raises(approved.NotApprovable, match=named):
        approved.approve(session, third)


def test_kefu_answers_on_a_database_without_the_tables_says_to_migrate(clean_env: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["answers", "list"]) == 2
    assert "has `kefu migrate` been run?" in capsys.readouterr().err


def test_kb_delete_of_an_approved_answer_s_document_is_a_revocation(sessions: sessionmaker[Session], db: Engine,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``kefu kb delete`` of an approved answer's document withdraws it exactly as ``kefu answers revoke`` does:
    both audit rows, so every withdrawal of an approved answer is an ``answer_revoked`` in the audit log."""
    reply_id = exchange(sessions, QUESTION, ANSWER)
    with transaction(sessions) as session:
        document_id = approved.approve(session, reply_id).answer.document_id
    assert main(["kb", "delete", str(document_id)]) == 0
    assert f"revoked the approved answer of reply #{reply_id}" in capsys.readouterr().out
    with sessions() as session:
        assert approved.approved(session) == []
    assert [(kind, rid) for kind, rid, _ in audit_rows(sessions)][-2:] == [("kb_deleted", None),
                                                                          ("answer_revoked", reply_id)]
    assert audit_rows(sessions)[-1][2] == {"document_id": document_id, "by": "cli"}
    assert verify(db).clean


def test_kb_list_keeps_approved_answers_apart(sessions: sessionmaker[Session], clean_env: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    sheet = clean_env / "faq.csv"
    sheet.write_text("问题,相似问,答案\n几点发货,什么时候发货,付款后 24 小时内发货。\n")
    assert main(["kb", "import", str(sheet)]) == 0
    reply_id = exchange(sessions, QUESTION, ANSWER)
    with transaction(sessions) as session:
        approved.approve(session, reply_id)
    capsys.readouterr()
    assert main(["kb", "list"]) == 0
    listing = capsys.readouterr().out
    assert "faq.csv — faq" in listing and f"reply:{reply_id}" not in listing
    assert "1 documents" in listing and "1 approved answer not listed (kefu answers list, or kefu kb list --all)" \
        in listing
    assert main(["kb", "list", "--all"]) == 0
    listing = capsys.readouterr().out
    documents, _, answers = listing.partition("approved answers (withdraw with kefu answers revoke REPLY_ID):")
    assert "faq.csv — faq" in documents and f"reply:{reply_id}" not in documents
    assert f"reply:{reply_id} — {approved.TITLE}" in answers


def test_importing_an_faq_sheet_that_covers_an_approved_question_warns_naming_it(
        sessions: sessionmaker[Session], clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The sheet is still imported (it may be the better answer), but the operator is told that the two entries now
    cancel each other out for paraphrases, and which approved answer to revoke."""
    reply_id = exchange(sessions, QUESTION, ANSWER)
    with transaction(sessions) as session:
        approved.approve(session, reply_id)
    sheet = clean_env / "faq.csv"
    sheet.write_text("问题,相似问,答案\n几点发货,什么时候发货,付款后 24 小时内发货。\n"
                     "退货以后退款多久能到账,退款几天到账,验收后 3-5 个工作日原路退回。\n")
    capsys.readouterr()
    assert main(["kb", "import", str(sheet)]) == 0
    captured = capsys.readouterr()
    assert "new" in captured.out
    warning = re.search(r"kefu: warning: faq\.csv: FAQ entry kb:\d+ \('退货以后退款多久能到账'\) also answers the "
                        rf"question of the approved answer of reply #{reply_id} .*kefu answers revoke {reply_id}",
                        captured.err)
    assert warning is not None, captured.err
    assert "几点发货" not in captured.err
    unrelated = clean_env / "other.csv"
    unrelated.write_text("问题,答案\n能开发票吗,可以，下单时填写抬头。\n")
    assert main(["kb", "import", str(unrelated)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_an_import_that_silences_an_approved_answer_warns_even_when_the_sheet_itself_is_unsure(
        sessions: sessionmaker[Session], clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two rows of the sheet asking the approved question (near-duplicates): neither answers it confidently, so the
    check approving makes sees no rival, yet with the sheet installed the approved answer no longer answers even its
    own question. That is warned too, naming the sheet's closest row."""
    reply_id = exchange(sessions, QUESTION, ANSWER)
    with transaction(sessions) as session:
        approved.approve(session, reply_id)
    sheet = clean_env / "faq.csv"
    sheet.write_text("问题,答案\n退货以后退款多久能到账,三到五个工作日。\n退货以后退款多久能到账呢,一周内。\n")
    settings = Settings()
    with sessions() as session:
        assert approved.answered_by(session, QUESTION, reply_id, settings) is None
    capsys.readouterr()
    assert main(["kb", "import", str(sheet)]) == 0
    err = capsys.readouterr().err
    assert err.count("kefu: warning: faq.csv: FAQ entry kb:") == 1, err
    assert f"the approved answer of reply #{reply_id}" in err
    with sessions() as session:  # the sheet's rows still do not answer it confidently themselves
        assert approved.answered_by(session, QUESTION, reply_id, settings) is None

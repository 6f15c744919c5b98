"""The console extras' model layer on SQLite and PostgreSQL: canned replies (models.canned), notes and tags
(models.notes), the satisfaction report (models.csat_report), FAQ entries edited and added in place
(models.knowledge.store.edit_faq / add_faq) and an agent's reply made an approved answer that decide() then gives
(models.knowledge.approved). Every change is audited with who did it and never the text."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from models import canned, csat_report, desk, notes
from models.dialogue import HandOff, Message, decide
from models.envelope import ConversationKey, utcnow
from models.infra.db import transaction
from models.knowledge import approved, faq_cache, store
from models.knowledge.documents import FaqRow, ParsedDocument
from models.knowledge.faq_sync import FaqSync
from models.settings import Settings
from models.states import ReplySource, Role
from models.tables import (
    AuditEvent,
    CannedReplyRecord,
    ConversationRecord,
    ConversationTagRecord,
    CsatRecord,
    InboundRecord,
    KbPassageRecord,
    ReplyRecord,
)
from tests.integration import conftest


@pytest.fixture
def db(db: tuple[Settings, sessionmaker[Session]]) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """The conftest's database of each kind, with no FAQ left installed by an earlier test (before and after)."""
    faq_cache.install([])
    try:
        yield db
    finally:
        faq_cache.install([])


def add_agent(sessions: sessionmaker[Session], name: str, role: Role = Role.AGENT) -> int:
    return conftest.add_agent(sessions, name, role, display_name=f"{name} 显示名")


def add_conversation(sessions: sessionmaker[Session], peer: str, *messages: str) -> int:
    with transaction(sessions) as session:
        conversation_id = desk.ensure_conversation(session, ConversationKey("web", "default", peer))
        for n, text in enumerate(messages):
            session.add(InboundRecord(conversation_id=conversation_id, channel="web", account="default",
                                      external_id=f"{peer}-{n}", text=text,
                                      received_at=utcnow() - timedelta(seconds=len(messages) - n)))
        session.execute(update(ConversationRecord).where(ConversationRecord.id == conversation_id)
                        .values(last_inbound_at=utcnow()))
        return conversation_id


def audits(sessions: sessionmaker[Session], kind: str) -> list[dict[str, Any]]:
    with sessions() as session:
        return [row.detail for row in session.scalars(select(AuditEvent).where(AuditEvent.kind == kind)
                                                      .order_by(AuditEvent.id))]


def test_canned_replies_are_saved_by_shortcut_replaced_and_deleted(db: tuple[Settings, sessionmaker[Session]]) -> None:
    _, sessions = db
    admin = add_agent(sessions, "boss", Role.ADMIN)
    with transaction(sessions) as session:
        assert canned.save(session, "refund", "退款将在 3 个工作日内原路退回。", admin, "boss")[0] is True
        assert canned.save(session, "退款", "中文快捷词", admin, "boss")[0] is True
    with transaction(sessions) as session:
        new, saved = canned.save(session, "refund", "  退款将在 1-3 个工作日内原路退回。 ", admin, "boss")
    assert (new, saved.text) == (False, "退款将在 1-3 个工作日内原路退回。")
    with sessions() as session:
        assert [(r.shortcut, r.text[:4]) for r in canned.replies(session)] == [("refund", "退款将在"), ("退款", "中文快捷")]
        assert session.scalar(select(func.count()).select_from(CannedReplyRecord)) == 2
    for bad_shortcut in ("Refund", "re fund", "a" * 33, "", "/x"):
        with pytest.raises(canned.CannedError), transaction(sessions) as session:
            canned.save(session, bad_shortcut, "text", admin, "boss")
    for bad_text in ("", "   ", "字" * 2001):
        with pytest.raises(canned.CannedError), transaction(sessions) as session:
            canned.save(session, "ok", bad_text, admin, "boss")
    with transaction(sessions) as session:
        assert canned.save(session, "x" * 32, "字" * 2000, admin, "boss")[0] is True  # both limits are inclusive
        assert canned.delete(session, "refund", admin, "boss") is True
        assert canned.delete(session, "refund", admin, "boss") is False
    saved_rows = audits(sessions, canned.SAVED)
    assert [(d["shortcut"], d["status"], d["by"]) for d in saved_rows] == [
        ("refund", "new", "boss"), ("退款", "new", "boss"), ("refund", "updated", "boss"), ("x" * 32, "new", "boss")]
    assert all("text" not in d for d in saved_rows)
    assert [d["shortcut"] for d in audits(sessions, canned.DELETED)] == ["refund"]


def test_notes_are_stored_for_agents_only_and_tags_filter_conversations(
        db: tuple[Settings, sessionmaker[Session]]) -> None:
    _, sessions = db
    agent = add_agent(sessions, "amy")
    first = add_conversation(sessions, "visitor-1", "我要退款")
    second = add_conversation(sessions, "visitor-2", "你好")
    with transaction(sessions) as session:
        note = notes.add_note(session, first, "  客户情绪激动，已承诺今天回电  ", agent, "amy")
    assert (note.text, note.agent_name) == ("客户情绪激动，已承诺今天回电", "amy 显示名")
    with sessions() as session:
        assert [n.text for n in notes.notes(session, first)] == ["客户情绪激动，已承诺今天回电"]
        assert notes.notes(session, second) == []
        # a note is no reply: nothing for the customer's channel to deliver
        assert session.scalar(select(func.count()).select_from(ReplyRecord)) == 0
    with pytest.raises(notes.NoteError), transaction(sessions) as session:
        notes.add_note(session, first, "   ", agent, "amy")
    with pytest.raises(notes.UnknownConversation), transaction(sessions) as session:
        notes.add_note(session, 10**9, "记录", agent, "amy")
    [added] = audits(sessions, notes.NOTE_ADDED)
    assert added == {"note_id": note.id, "chars": 14, "agent_id": agent, "by": "amy"}

    with transaction(sessions) as session:
        assert notes.tag(session, first, "退款", agent, "amy") is True
        assert notes.tag(session, first, " 退款 ", agent, "amy") is False  # once per conversation
        assert notes.tag(session, first, "VIP", agent, "amy") is True
        assert notes.tag(session, second, "VIP", agent, "amy") is True
    for bad in ("", "a b", "a/b", "x" * 33):
        with pytest.raises(notes.NoteError), transaction(sessions) as session:
            notes.tag(session, first, bad, agent, "amy")
    with sessions() as session:
        assert notes.tags(session, first) == ["退款", "VIP"]
        assert notes.tag_counts(session) == [("VIP", 2), ("退款", 1)]
        refund = session.scalars(select(ConversationRecord.id).where(notes.tagged("退款"))).all()
        vip = session.scalars(select(ConversationRecord.id).where(notes.tagged("VIP")).order_by(ConversationRecord.id))
        assert (list(refund), list(vip)) == ([first], [first, second])
    with transaction(sessions) as session:
        assert notes.untag(session, first, "退款", agent, "amy") is True
        assert notes.untag(session, first, "退款", agent, "amy") is False
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ConversationTagRecord)) == 2
    assert [d["tag"] for d in audits(sessions, notes.TAGGED)] == ["退款", "VIP", "VIP"]
    assert [d["tag"] for d in audits(sessions, notes.UNTAGGED)] == ["退款"]


def test_the_satisfaction_report_counts_scores_per_agent_and_for_the_bot(
        db: tuple[Settings, sessionmaker[Session]]) -> None:
    _, sessions = db
    amy, bob = add_agent(sessions, "amy"), add_agent(sessions, "bob")
    scores = [(None, 5, 1), (None, 4, 2), (amy, 1, 1), (amy, 5, 3), (amy, 4, 40), (bob, 3, 5)]  # (agent, score, days)
    with transaction(sessions) as session:
        for n, (agent_id, score, days) in enumerate(scores):
            conversation_id = desk.ensure_conversation(session, ConversationKey("web", "default", f"p{n}"))
            session.add(CsatRecord(conversation_id=conversation_id, round=0, agent_id=agent_id, channel="web",
                                   score=score, created_at=utcnow() - timedelta(days=days, hours=1)))
    with sessions() as session:
        month = csat_report.report(session, 30).json()
        week = csat_report.report(session, 2).json()
        year = csat_report.report(session, 365).json()
    lines = {line["name"]: line for line in month["lines"]}
    assert list(lines) == ["机器人", "amy 显示名", "bob 显示名"]
    assert (lines["机器人"]["count"], lines["机器人"]["average"]) == (2, 4.5)
    assert lines["机器人"]["distribution"] == {"1": 0, "2": 0, "3": 0, "4": 1, "5": 1}
    assert (lines["amy 显示名"]["count"], lines["amy 显示名"]["average"]) == (2, 3.0)  # the 40-day-old 4 is out
    assert lines["amy 显示名"]["distribution"] == {"1": 1, "2": 0, "3": 0, "4": 0, "5": 1}
    assert (month["total"]["count"], month["total"]["average"]) == (5, 3.6)
    assert [(line["name"], line["count"]) for line in week["lines"]] == [("机器人", 1), ("amy 显示名", 1)]
    assert year["total"]["count"] == 6
    with sessions() as session, pytest.raises(ValueError):
        csat_report.report(session, 0)


FAQ_SHEET = ParsedDocument("faq/shipping.csv", "配送问答", "faq_csv", "a" * 64, faq=(
    FaqRow("多久发货", ("什么时候发货",), "付款后 48 小时内发货。"),
    FaqRow("支持哪些快递", (), "默认顺丰，偏远地区邮政。")))


def test_an_faq_entry_is_edited_and_added_in_place_and_audited(db: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, sessions = db
    with transaction(sessions) as session:
        document = store.import_document(session, FAQ_SHEET, by="cli").document
        revision = store.revision(session)
    with sessions() as session:
        found = store.document(session, document.id)
    assert found is not None
    first = found[2][0]
    similar = ("什么时候发货", "几天发货", "", "几天发货", "下单后多久发货")  # empties, repeats, the question: dropped
    edited = FaqRow(" 下单后多久发货 ", similar, "付款后 24 小时内发货。")
    with transaction(sessions) as session:
        change = store.edit_faq(session, first.id, edited, by="boss")
    assert change is not None and change.status == store.UPDATED
    assert (change.faq.question, change.faq.similar, change.faq.answer) == (
        "下单后多久发货", ("什么时候发货", "几天发货"), "付款后 24 小时内发货。")
    with transaction(sessions) as session:
        again = store.edit_faq(session, first.id, edited, by="boss")
        assert again is not None and again.status == store.UNCHANGED
        assert store.edit_faq(session, 10**9, edited, by="boss") is None
        info = store.document(session, document.id)
        assert info is not None and info[0].version == 2 and info[0].content_hash != FAQ_SHEET.content_hash
        assert store.revision(session) == revision + 1
    with pytest.raises(store.FaqEditError), transaction(sessions) as session:
        store.edit_faq(session, first.id, FaqRow("问题", (), "  "), by="boss")
    [audited] = audits(sessions, "kb_faq_edited")
    assert (audited["document_id"], audited["faq_id"], audited["version"], audited["by"]) == (
        document.id, first.id, 2, "boss")

    # the process's FAQ picks the edit up: a customer's question gets the new answer
    assert FaqSync(sessions, settings).poll()
    decision = decide(settings, Message("下单后多久发货"), HandOff.PERSON)
    assert (decision.why, decision.text) == ("faq", "付款后 24 小时内发货。")

    with transaction(sessions) as session:
        added = store.add_faq(session, document.id, FaqRow("能开发票吗", (), "可以，下单时填写抬头。"), by="boss")
        manual = store.add_faq(session, None, FaqRow("营业时间", ("几点上班",), "每天 9:00-21:00。"), by="boss")
        manual2 = store.add_faq(session, None, FaqRow("客服电话", (), "请在网页留言。"), by="boss")
        prose = store.import_document(session, ParsedDocument("policy.md", "政策", "markdown", "b" * 64,
                                                              passages=()), by="cli").document
        session.add(KbPassageRecord(document_id=prose.id, ordinal=0, heading="", text="退货政策"))
    assert added.status == store.NEW and added.faq.document_id == document.id
    assert manual.faq.document_id == manual2.faq.document_id != document.id
    with pytest.raises(store.FaqEditError), transaction(sessions) as session:
        store.add_faq(session, prose.id, FaqRow("问", (), "答"), by="boss")
    with pytest.raises(store.FaqEditError), transaction(sessions) as session:
        store.add_faq(session, 10**9, FaqRow("问", (), "答"), by="boss")
    with sessions() as session:
        sheet = store.document(session, document.id)
        hand = store.document(session, manual.faq.document_id)
    assert sheet is not None and [f.question for f in sheet[2]] == ["下单后多久发货", "支持哪些快递", "能开发票吗"]
    assert hand is not None and (hand[0].source, hand[0].kind, hand[0].version, hand[0].faq) == (
        store.MANUAL_FAQ_SOURCE, store.MANUAL_FAQ_KIND, 2, 2)
    assert [d["by"] for d in audits(sessions, "kb_faq_added")] == ["boss"] * 3

    # importing the sheet's file again replaces the edits (the document no longer holds the file's content)
    with transaction(sessions) as session:
        assert store.import_document(session, FAQ_SHEET, by="cli").status == store.UPDATED
        reimported = store.document(session, document.id)
    assert reimported is not None and [f.question for f in reimported[2]] == ["多久发货", "支持哪些快递"]


def test_an_agents_reply_becomes_an_approved_answer_that_decide_gives(
        db: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, sessions = db
    agent = add_agent(sessions, "amy")
    conversation_id = add_conversation(sessions, "visitor-9", "你好", "会员积分可以抵扣运费吗")
    with transaction(sessions) as session:
        desk.claim(session, conversation_id, agent)
        reply_id = desk.store_agent_reply(session, conversation_id, agent, "积分可以抵扣运费，100 积分抵 1 元。")
    with sessions() as session:
        reply = session.get(ReplyRecord, reply_id)
        assert reply is not None and reply.inbound_id is None
        assert approved.question_of(session, reply) == "会员积分可以抵扣运费吗"  # the customer's message before it
    with transaction(sessions) as session:
        done = approved.approve(session, reply_id, by="amy", settings=settings,
                                answer="积分可以抵扣运费：100 积分抵 1 元，最多抵扣运费全额。")
    assert (done.status, done.answer.question) == (store.NEW, "会员积分可以抵扣运费吗")
    [audited] = audits(sessions, "answer_approved")
    assert (audited["by"], audited["document_id"]) == ("amy", done.answer.document_id)

    assert FaqSync(sessions, settings).poll()
    later = decide(settings, Message("会员积分能抵扣运费吗"), HandOff.PERSON)
    assert (later.why, later.source, later.text) == (
        f"approved_answer:{reply_id}", ReplySource.APPROVED, "积分可以抵扣运费：100 积分抵 1 元，最多抵扣运费全额。")

    # a reply that is neither the model's nor an agent's needs the operator's answer; personal data is refused
    with transaction(sessions) as session:
        other = add_reply(session, conversation_id, ReplySource.FALLBACK, "抱歉，我暂时无法回答。")
    with pytest.raises(approved.NotApprovable, match="not a model answer"), transaction(sessions) as session:
        approved.approve(session, other, "怎么修改收货地址", by="amy", settings=settings)
    with pytest.raises(approved.NotApprovable, match="personal data"), transaction(sessions) as session:
        approved.approve(session, other, "怎么修改收货地址", by="amy", settings=settings, answer="请拨打 13812345678")
    with transaction(sessions) as session:
        fixed = approved.approve(session, other, "怎么修改收货地址", by="amy", settings=settings,
                                 answer="在“我的订单”里点“修改地址”。")
    assert fixed.status == store.NEW


def add_reply(session: Session, conversation_id: int, source: ReplySource, text: str) -> int:
    reply = ReplyRecord(conversation_id=conversation_id, text=text, source=source, created_at=utcnow())
    session.add(reply)
    session.flush()
    return int(reply.id)

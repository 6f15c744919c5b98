"""Satisfaction scores (models.csat) on SQLite and PostgreSQL: the request is a ``csat`` reply with a pending
delivery and no inbound, an empty request text stores nothing, a score is stored for the conversation's current
round with the agent who served it (from the audit trail), re-rating replaces, scores outside 1-5 are refused,
and the customer's number is read in its usual spellings."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import csat, desk
from models.envelope import ConversationKey
from models.infra.db import transaction
from models.settings import Settings
from models.states import DeliveryStatus, ReplySource
from models.tables import AuditEvent, CsatRecord, DeliveryRecord, ReplyRecord
from tests.integration.conftest import add_agent


@pytest.mark.parametrize(("text", "score"), [
    ("5", 5), ("５", 5), ("5分", 5), ("五", 5), (" 4 ", 4), ("三分", 3), ("1星", 1), ("２。", 2), ("两分", 2)])
def test_score_of_reads_a_number(text: str, score: int) -> None:
    assert csat.score_of(text) == score


@pytest.mark.parametrize("text", ["", "0", "6", "55", "5 stars please", "我给5分吧", "十", "还有个问题", "-1"])
def test_score_of_refuses_other_text(text: str) -> None:
    assert csat.score_of(text) is None


def test_ask_then_record_per_round(db: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, sessions = db
    alice, bob = add_agent(sessions, "alice"), add_agent(sessions, "bob")
    with transaction(sessions) as session:
        conv = desk.ensure_conversation(session, ConversationKey("wechat_mp", "gh_1", "o1"))
        desk.claim(session, conv, alice)
        desk.hand_back(session, conv, alice)
        reply_id = csat.ask(session, conv, alice, settings)
    assert reply_id is not None
    with sessions() as session:
        reply = session.get(ReplyRecord, reply_id)
        assert reply is not None
        assert (reply.text, reply.source, reply.inbound_id) == (settings.csat_request_reply, ReplySource.CSAT, None)
        assert session.scalars(select(DeliveryRecord.status).where(DeliveryRecord.reply_id == reply_id)).one() \
            == DeliveryStatus.PENDING
    with transaction(sessions) as session:
        first = csat.record(session, conv, 2, "wechat_mp", "慢")
    with transaction(sessions) as session:  # re-rating the same round replaces
        again = csat.record(session, conv, 5, "wechat_mp")
    assert first == again
    with transaction(sessions) as session:  # a second round, served by bob
        desk.claim(session, conv, bob)
        desk.hand_back(session, conv, None)
        csat.record(session, conv, 3, "wechat_mp")
    with sessions() as session:
        rows = session.execute(select(CsatRecord.round, CsatRecord.agent_id, CsatRecord.score, CsatRecord.comment)
                               .where(CsatRecord.conversation_id == conv).order_by(CsatRecord.round)).all()
        trail = session.execute(select(AuditEvent.kind, AuditEvent.detail).where(
            AuditEvent.conversation_id == conv, AuditEvent.kind.in_((csat.CSAT_ASKED, csat.CSAT_RECORDED)))
            .order_by(AuditEvent.id)).all()
    assert [tuple(r) for r in rows] == [(1, alice, 5, ""), (2, bob, 3, "")]
    assert [k for k, _ in trail] == [csat.CSAT_ASKED, *[csat.CSAT_RECORDED] * 3]
    assert [(d["score"], d["round"], d["agent_id"]) for k, d in trail[1:]] == [(2, 1, alice), (5, 1, alice),
                                                                                (3, 2, bob)]


def test_bot_round_refusals_and_empty_request(db: tuple[Settings, sessionmaker[Session]], tmp_path: Path) -> None:
    settings, sessions = db
    with transaction(sessions) as session:
        conv = desk.ensure_conversation(session, ConversationKey("web", "site", "v1"))
        assert csat.record(session, conv, 4, "web") > 0  # the bot's round 0, no agent
        for bad in (0, 6, True):
            with pytest.raises(ValueError):
                csat.record(session, conv, bad, "web")
        with pytest.raises(LookupError):
            csat.record(session, conv + 1000, 4, "web")
        quiet = settings.model_copy(update={"csat_request_reply": "  "})
        assert csat.ask(session, conv, None, quiet) is None
        call = desk.ensure_conversation(session, ConversationKey("phone", "4008001234", "+8613800138000"))
        assert csat.ask(session, call, None, settings) is None  # a call has nobody to read the request
    with sessions() as session:
        assert session.execute(select(CsatRecord.round, CsatRecord.agent_id, CsatRecord.score)).all() == [(0, None, 4)]
        assert session.scalars(select(ReplyRecord.id)).all() == []

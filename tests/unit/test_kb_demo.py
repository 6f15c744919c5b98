"""The demo's sample knowledge base (workers/demo/kb, a fictional shop) answers the demo's questions: three are FAQ
hits answered with the sheet's exact text by ``decide()``, the other two reach the model with the shipping passages."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.dialogue import Action, HandOff, Message, decide
from models.infra.db import make_session_factory
from models.knowledge import faq_cache, store
from models.knowledge.faq_sync import FaqSync
from models.settings import Settings
from workers.demo.run import DEMO_KB, QUESTIONS
from workers.grounding import Knowledge
from workers.kb_command import import_paths

FAQ_HITS = {
    "你好，我昨天下的订单什么时候能发货？": "付款后 24 小时内发货",
    "How do I reset my account password?": 'On the login page, tap "Forgot password"',
    "请问你们支持七天无理由退货吗？": "支持。签收后 7 天内",
}
TO_THE_MODEL = {"那可以改成顺丰快递吗？": "快递公司", "Do you ship to Hong Kong, and how long does it take?": "港澳台和海外"}


@pytest.fixture
def sessions(db: Engine, clean_env: Path) -> Iterator[sessionmaker[Session]]:
    """The demo's knowledge base imported as ``kefu demo`` does, its FAQ installed as a process's FaqSync does."""
    sessions = make_session_factory(db)
    assert import_paths(sessions, [str(DEMO_KB)], out=io.StringIO()) == 0
    assert FaqSync(sessions, Settings(data_dir=clean_env / "var")).poll()
    yield sessions
    faq_cache.install([])


def test_every_demo_question_is_covered() -> None:
    assert {q for _, q in QUESTIONS} == FAQ_HITS.keys() | TO_THE_MODEL.keys()


def test_faq_hits_are_answered_with_the_exact_text(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        answers = {row.answer for row in store.faq_rows(session)}
    for question, start in FAQ_HITS.items():
        decision = decide(Settings(), Message(question), HandOff.NOBODY)
        assert (decision.action, decision.why) == (Action.ANSWER, "faq"), question
        assert decision.text in answers and decision.text.startswith(start)


def test_the_others_go_to_the_model_with_the_passage_that_answers(sessions: sessionmaker[Session]) -> None:
    knowledge = Knowledge(sessions)
    for question, heading in TO_THE_MODEL.items():
        assert decide(Settings(), Message(question), HandOff.NOBODY).action is Action.GENERATE
        grounding = knowledge.lookup(question)
        assert grounding is not None and heading in [s.heading for s in grounding.sources], question

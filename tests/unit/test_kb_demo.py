"""The demo's sample knowledge base (workers/demo/kb, a fictional shop) answers the demo's questions: three are FAQ
hits answered with the sheet's exact text by ``decide()``, the other two reach the model with the shipping passages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.dialogue import Action, HandOff, Message, decide
from models.knowledge import faq_cache, readers
from models.knowledge.faq import FaqEntry
from models.knowledge.passage_index import PassageIndex
from models.settings import Settings
from workers.demo.run import DEMO_KB, QUESTIONS

FAQ_HITS = {
    "你好，我昨天下的订单什么时候能发货？": "付款后 24 小时内发货",
    "How do I reset my account password?": 'On the login page, tap "Forgot password"',
    "请问你们支持七天无理由退货吗？": "支持。签收后 7 天内",
}
TO_THE_MODEL = {"那可以改成顺丰快递吗？": "快递公司", "Do you ship to Hong Kong, and how long does it take?": "港澳台和海外"}


@pytest.fixture
def documents(clean_env: Path) -> Iterator[list[readers.ParsedDocument]]:
    found = [readers.read(path) for path in sorted(DEMO_KB.iterdir())]
    faq_cache.install([FaqEntry(f"kb:{n}", row.question, row.answer, row.similar)
                       for n, row in enumerate(r for d in found for r in d.faq)])
    yield found
    faq_cache.install([])


def test_every_demo_question_is_covered() -> None:
    assert {q for _, q in QUESTIONS} == FAQ_HITS.keys() | TO_THE_MODEL.keys()


def test_faq_hits_are_answered_with_the_exact_text(documents: list[readers.ParsedDocument]) -> None:
    answers = {row.answer for d in documents for row in d.faq}
    for question, start in FAQ_HITS.items():
        decision = decide(Settings(), Message(question), HandOff.NOBODY)
        assert (decision.action, decision.why) == (Action.ANSWER, "faq"), question
        assert decision.text in answers and decision.text.startswith(start)


def test_the_others_go_to_the_model_with_the_passage_that_answers(documents: list[readers.ParsedDocument]) -> None:
    passages = [(d.title, p.heading, p.text) for d in documents for p in d.passages]
    index = PassageIndex(["\n".join(p) for p in passages])
    for question, heading in TO_THE_MODEL.items():
        assert decide(Settings(), Message(question), HandOff.NOBODY).action is Action.GENERATE
        assert heading in [passages[at][1] for at, _ in index.search(question, 3)], question

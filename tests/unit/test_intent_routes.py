"""decide()'s intent routes (KEFU_INTENT_ROUTES): after moderation and the hand-off rules, before the FAQ, on every
channel; audited through Decision.why "intent_route:<label>". Messages are hand-written."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models.dialogue import Action, HandOff, Message, decide, routed
from models.knowledge import faq_cache
from models.settings import Settings
from models.states import ReplySource

COMPLAINT = "说好的今天到，结果又没到"  # a complaint without the negative words the unhappy rule reacts to
FAQ = [{"question": "说好的今天到怎么没到", "answer": "物流稍有延误，请再等一天。"}]


@pytest.fixture(autouse=True)
def no_installed_entries() -> Iterator[None]:
    faq_cache.install(())
    yield
    faq_cache.install(())


def test_a_routed_intent_is_handed_to_a_person_before_the_faq_answers() -> None:
    settings = Settings(faq=FAQ, intent_routes={"complaint": "hand_off"})
    decision = decide(settings, Message(COMPLAINT, channel="web"), HandOff.PERSON)
    assert (decision.action, decision.why, decision.text, decision.source) == (
        Action.HAND_OFF, "intent_route:complaint", settings.handoff_reply, ReplySource.HANDOFF)


def test_where_nobody_can_take_it_the_customer_is_told_honestly() -> None:
    settings = Settings(intent_routes={"complaint": "hand_off"})
    decision = decide(settings, Message(COMPLAINT), HandOff.NOBODY)
    assert (decision.action, decision.why, decision.text) == (
        Action.ANSWER, "intent_route:complaint_none_available", settings.handoff_unavailable_reply)


def test_an_answer_route_replies_with_its_text() -> None:
    settings = Settings(intent_routes={"invoice": "answer:电子发票在订单详情页申请。"})
    decision = decide(settings, Message("能开发票吗"), HandOff.PERSON)
    assert (decision.action, decision.why, decision.text, decision.source) == (
        Action.ANSWER, "intent_route:invoice", "电子发票在订单详情页申请。", ReplySource.RULE)


def test_without_a_route_the_faq_and_the_model_decide_as_before() -> None:
    assert decide(Settings(faq=FAQ), Message(COMPLAINT), HandOff.PERSON).why == "faq"
    assert decide(Settings(intent_routes={"complaint": "hand_off"}), Message("今天天气怎么样"),
                  HandOff.PERSON).action is Action.GENERATE


def test_a_request_for_a_person_and_moderation_come_first() -> None:
    settings = Settings(intent_routes={"ask_for_person": "answer:不会用到", "complaint": "answer:不会用到"})
    assert decide(settings, Message("转人工"), HandOff.PERSON).why == "asks_for_person"
    assert decide(settings.model_copy(update={"handoff_on_negative": True}), Message("什么垃圾服务"),
                  HandOff.PERSON).why == "negative_sentiment"


def test_routed_is_what_a_worker_applies_to_the_models_label() -> None:
    settings = Settings(intent_routes={"shipping": "hand_off"})
    decision = routed(settings, "shipping", HandOff.PERSON)
    assert decision is not None and decision.why == "intent_route:shipping"
    assert routed(settings, "payment", HandOff.PERSON) is None

"""Tests for models.quick_replies: which customer messages ask for a person."""

from __future__ import annotations

import pytest

from models.quick_replies import wants_human
from models.settings import Settings


@pytest.mark.parametrize("text", ["转人工", "我要转人工！", "人工", "人工。", "请帮我找人工客服", "有真人客服吗？"])
def test_asking_for_a_person(text: str) -> None:
    assert wants_human(Settings(), text)


@pytest.mark.parametrize("text", ["人工智能是什么？", "你们的人工费怎么算", "退货", ""])
def test_not_asking_for_a_person(text: str) -> None:
    assert not wants_human(Settings(), text)


def test_keywords_are_configurable() -> None:
    settings = Settings(handoff_keywords=["找客服"])
    assert wants_human(settings, "我要找客服") and not wants_human(settings, "转人工") and wants_human(settings, "人工")


def test_declining_a_person_is_not_asking_for_one() -> None:
    settings = Settings()
    assert wants_human(settings, "我要转人工") and wants_human(settings, "人工") and wants_human(settings, "人工客服！")
    assert not wants_human(settings, "不用转人工了，谢谢")
    assert not wants_human(settings, "别转人工")
    assert not wants_human(settings, "不需要人工客服")
    assert wants_human(settings, "不用了，还是转人工吧")  # the negation belongs to something else
    assert wants_human(settings, "我特别想找人工") and wants_human(settings, "特别需要人工服务")
    assert wants_human(settings, "别的都不要，转人工")


def test_one_set_of_rules_for_every_channel() -> None:
    from models.quick_replies import Rule, rule_for

    settings = Settings(faq=[{"keywords": ["发票"], "answer": "电子发票24小时内发送。"}])  # type: ignore[list-item]
    assert rule_for(settings, "转人工", hands_off=True) == Rule(settings.handoff_reply, "handoff", to_person=True)
    assert rule_for(settings, "转人工", hands_off=False) == Rule(settings.handoff_unavailable_reply, "rule")
    assert rule_for(settings, "转人工", hands_off=None) is None  # not this caller's to decide: the model answers
    assert rule_for(settings, "可以开发票吗", hands_off=True) == Rule("电子发票24小时内发送。", "faq")
    assert rule_for(settings, "快递到哪了", hands_off=True) is None

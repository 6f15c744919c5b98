"""decide()'s faq rule on the in-memory FAQ index: answers at once when confident, abstains otherwise, keeps the
old keyword entries of KEFU_FAQ, and rebuilds the index only when the FAQ changed. Entries are hand-written."""

from __future__ import annotations

import json

import pytest

from models.dialogue import Action, HandOff, Message, decide
from models.knowledge import faq_cache
from models.knowledge.faq import FaqEntry
from models.settings import ConfigError, Settings, load_settings
from models.states import ReplySource

FAQ = [
    {"question": "几点发货？", "similar": ["什么时候发货", "下单后多久发货"], "answer": "付款后 24 小时内发货。"},
    {"question": "怎么开发票？", "similar": ["能开发票吗"], "answer": "在订单详情页申请电子发票。"},
    {"keywords": ["营业", "时间"], "answer": "客服每天 9:00-21:00 在线。"},
]


@pytest.fixture(autouse=True)
def no_installed_entries():
    faq_cache.install(())
    yield
    faq_cache.install(())


def settings(**more) -> Settings:
    return Settings(faq=FAQ, **more)


def test_a_similar_question_is_answered_without_the_model() -> None:
    decision = decide(settings(), Message("下单以后多久发货"), HandOff.PERSON)
    assert (decision.action, decision.why, decision.text, decision.source) == (
        Action.ANSWER, "faq", "付款后 24 小时内发货。", ReplySource.FAQ)


def test_below_the_threshold_the_model_answers() -> None:
    assert decide(settings(), Message("你们家的衣服起球吗"), HandOff.PERSON).action is Action.GENERATE
    assert decide(settings(faq_threshold=1.0), Message("下单以后多久发货"), HandOff.PERSON).action is Action.GENERATE


def test_keyword_entries_of_kefu_faq_keep_working(monkeypatch) -> None:
    monkeypatch.setenv("KEFU_FAQ", json.dumps([{"keywords": ["营业", "时间"], "answer": "九点到九点"}]))
    assert decide(load_settings(), Message("营业时间？"), HandOff.NOBODY).text == "九点到九点"


def test_an_entry_with_neither_question_nor_keywords_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setenv("KEFU_FAQ", json.dumps([{"answer": "?"}]))
    with pytest.raises(ConfigError, match=r"KEFU_FAQ\[0\].*question or keywords"):
        load_settings()


def test_installed_knowledge_base_entries_answer_too() -> None:
    faq_cache.install([FaqEntry("kb:1", "支持七天无理由退货吗", "支持，签收后七天内。", ("能七天无理由退吗",))])
    assert decide(settings(), Message("能不能七天无理由退货"), HandOff.PERSON).text == "支持，签收后七天内。"
    faq_cache.install(())
    assert decide(settings(), Message("能不能七天无理由退货"), HandOff.PERSON).action is Action.GENERATE


def test_the_index_is_built_once_per_faq() -> None:
    first = settings()
    index = faq_cache.index_for(first)
    assert faq_cache.index_for(first) is index
    assert faq_cache.index_for(settings()) is index  # same content in another Settings: no rebuild
    changed = Settings(faq=[*FAQ, {"question": "包邮吗", "answer": "满 99 包邮。"}])
    assert faq_cache.index_for(changed) is not index
    assert decide(changed, Message("包邮吗？"), HandOff.PERSON).text == "满 99 包邮。"


def test_install_builds_before_the_swap_so_messages_never_build(monkeypatch) -> None:
    current = settings()
    faq_cache.index_for(current)
    builds = []
    real = faq_cache.FaqIndex

    def counting(entries):
        builds.append(len(entries))
        return real(entries)

    monkeypatch.setattr(faq_cache, "FaqIndex", counting)
    faq_cache.install([FaqEntry("kb:1", "支持七天无理由退货吗", "支持。")], current)
    assert builds == [len(FAQ) + 1]
    assert decide(current, Message("支持七天无理由退货吗"), HandOff.PERSON).text == "支持。"
    assert builds == [len(FAQ) + 1]  # the message used the installed index


def test_an_entry_the_index_refuses_changes_nothing() -> None:
    current = settings()
    before = faq_cache.index_for(current)
    with pytest.raises(ValueError, match="neither"):
        faq_cache.install([FaqEntry("kb:9", "", "无问题")], current)
    assert faq_cache.index_for(current) is before

"""Tests for models.dialogue: the one decision every channel carries out."""

from __future__ import annotations

import pytest

from models.dialogue import (
    Action,
    Decision,
    HandOff,
    Message,
    decide,
    fallback_reply,
    person_request,
    prompt_hint,
)
from models.handoff_detect import Verdict
from models.settings import Settings
from models.states import ReplySource


def wants_human(settings: Settings, text: str) -> bool:
    """The message clearly asks for a person (handed off at once; an UNCLEAR one is asked back)."""
    return person_request(settings, Message(text)) is Verdict.REQUEST


@pytest.mark.parametrize("text", ["转人工", "我要转人工！", "人工", "人工。", "请帮我找人工客服", "有真人客服吗？"])
def test_asking_for_a_person(text: str) -> None:
    assert wants_human(Settings(), text)


@pytest.mark.parametrize("text", ["人工智能是什么？", "你们的人工费怎么算", "退货", ""])
def test_not_asking_for_a_person(text: str) -> None:
    assert not wants_human(Settings(), text)


def test_keywords_are_configurable() -> None:  # the operator's words for a person, on top of the built-in ones
    settings = Settings(handoff_keywords=["掌柜"])
    assert wants_human(settings, "叫掌柜的来") and not wants_human(Settings(), "叫掌柜的来")
    assert wants_human(settings, "转人工") and wants_human(settings, "人工") and not wants_human(settings, "不用找掌柜")


def test_declining_a_person_is_not_asking_for_one() -> None:
    settings = Settings()
    assert wants_human(settings, "我要转人工") and wants_human(settings, "人工") and wants_human(settings, "人工客服！")
    assert not wants_human(settings, "不用转人工了，谢谢")
    assert not wants_human(settings, "别转人工")
    assert not wants_human(settings, "不需要人工客服")
    assert wants_human(settings, "不用了，还是转人工吧")  # the negation belongs to something else
    assert wants_human(settings, "我特别想找人工") and wants_human(settings, "特别需要人工服务")
    assert wants_human(settings, "别的都不要，转人工")


FAQ = [{"keywords": ["发票"], "answer": "电子发票24小时内发送。"}]


def test_a_request_for_a_person_follows_what_the_channel_can_do() -> None:
    settings = Settings(faq=FAQ)  # type: ignore[arg-type]
    assert decide(settings, Message("转人工"), HandOff.PERSON) == Decision(
        Action.HAND_OFF, "asks_for_person", settings.handoff_reply, ReplySource.HANDOFF)
    honest = decide(settings, Message("转人工，开发票"), HandOff.NOBODY)  # before the FAQ: the person was asked for
    assert honest == Decision(Action.ANSWER, "asks_for_person_none_available", settings.handoff_unavailable_reply,
                              ReplySource.RULE)


def test_faq_then_the_model() -> None:
    settings = Settings(faq=FAQ)  # type: ignore[arg-type]
    assert decide(settings, Message("可以开发票吗"), HandOff.NOBODY) == Decision(
        Action.ANSWER, "faq", "电子发票24小时内发送。", ReplySource.FAQ)
    model = decide(settings, Message("快递到哪了"), HandOff.PERSON)
    assert model.action is Action.GENERATE and model.why == "no_rule"
    with pytest.raises(ValueError, match="no answer"):
        model.answer()


def test_messages_without_text() -> None:
    settings = Settings()
    image = decide(settings, Message("", "image"), HandOff.PERSON)
    assert image.action is Action.ANSWER and "图片" in image.text and image.source is ReplySource.RULE
    to_transcribe = decide(settings, Message("", "voice", has_media=True), HandOff.NOBODY)
    assert to_transcribe.action is Action.GENERATE and to_transcribe.why == "voice_to_transcribe"
    lost_voice = decide(settings, Message("", "voice"), HandOff.NOBODY)  # no media to download: nothing to hear
    assert lost_voice.action is Action.ANSWER and "语音" in lost_voice.text


def test_rules_are_pluggable() -> None:
    def closed(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
        return Decision(Action.ANSWER, "closed", "今天休息。", ReplySource.RULE)

    assert decide(Settings(), Message("在吗"), HandOff.NOBODY, rules=[closed]).why == "closed"


def test_the_fallback_and_the_prompt_mention_a_person_only_where_one_can_take_over() -> None:
    settings = Settings()
    assert "转人工" in fallback_reply(settings, HandOff.PERSON)
    assert "转人工" not in fallback_reply(settings, HandOff.NOBODY)
    assert "转人工" in (prompt_hint(settings, HandOff.PERSON) or "")
    assert prompt_hint(settings, HandOff.NOBODY) is None
    assert "转人工" not in settings.system_prompt
    assert prompt_hint(Settings(prompt_handoff_hint=""), HandOff.PERSON) is None


def test_a_hand_off_whose_notice_cannot_be_stored_is_undone(tmp_path: object) -> None:
    """begin() marks the conversation before the notice is stored; if storing fails, the mark is released, so the
    customer's next message is not kept for a person nobody called."""
    from channels.wechat_mp import StaffHandOff, human_key
    from models.envelope import ConversationKey
    from models.infra.kv import make_kv

    settings = Settings(data_dir=tmp_path, wechat_accounts=[  # type: ignore[arg-type]
        {"name": "shop", "appid": "wx1", "secret": "s", "token": "t", "human_service": True}])
    port = StaffHandOff(settings, make_kv(settings))
    key = ConversationKey("wechat_mp", "shop", "o-1")
    assert port.availability("shop") is HandOff.PERSON and port.availability("gone") is HandOff.NOBODY
    with pytest.raises(RuntimeError), port.beginning(key):
        assert port.with_person(key)
        raise RuntimeError("the database went away")
    assert not port.with_person(key) and port.kv.get(human_key(key)) is None
    with port.beginning(key):
        pass
    assert port.with_person(key)
    assert port.later_notice("shop", settings.handoff_reply) != settings.handoff_reply  # asks for the next message

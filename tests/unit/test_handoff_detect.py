"""Tests for hand-off detection (models.handoff_detect), the hand-off rules of decide() and the worker's follow-up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from bench.handoff_eval import read
from channels.base import HandOffPort
from models.dialogue import Action, Decision, HandOff, Message, decide, person_request
from models.envelope import ConversationKey, utcnow
from models.evaluation.metrics import HandoffScore, handoff_score
from models.handoff_detect import Verdict, detect, is_yes, negative_word
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.replies import Answer, store_reply
from models.settings import Settings
from models.states import ReplySource
from models.tables import Base, ConversationRecord, InboundRecord, ReplyRecord
from workers import answering
from workers.follow_up import conversation_state, decide_again

DATA = Path(__file__).resolve().parents[1] / "data" / "handoff"

REQUESTS = ["我想找客服", "有没有真人", "帮我接个人工", "转人工", "人工服务", "叫你们经理来", "能不能让真人回答",
            "我要投诉找人", "人工", "人工。", "请帮我找人工客服", "有真人客服吗？", "不用了，还是转人工吧",
            "别的都不要，转人工", "我特别想找人工", "我不要机器人，我要人工", "有人吗", "人呢？", "客服在不在",
            "ＯＫ，转人工", "给我换个客服", "转接一下花呗"]
NOT_REQUESTS = ["人工客服就不用了", "我没说要转人工", "别给我转人工，机器人回答就行", "我也打过人工客服",
                "刚才人工说明天发货", "人工客服几点上班？", "客服电话是多少", "人工智能是什么？", "你们的人工费怎么算",
                "借呗可以人工审核吗", "可以找人代付吗", "不用转人工了，谢谢", "别转人工", "不需要人工客服",
                "我打10010转人工都没人接", "客服，我的花呗还清了，怎么不显示有花呗出来", "退货", "", "   "]


@pytest.mark.parametrize("text", REQUESTS)
def test_requests_for_a_person_in_customers_words(text: str) -> None:
    assert detect(text).verdict is Verdict.REQUEST, detect(text)


@pytest.mark.parametrize("text", NOT_REQUESTS)
def test_declines_mentions_and_questions_about_agents_are_not_requests(text: str) -> None:
    assert detect(text).verdict is Verdict.NOT, detect(text)


@pytest.mark.parametrize("text", ["你是机器人吗", "你是真人还是机器人", "是人工服务吗", "客服"])
def test_may_be_a_request(text: str) -> None:
    assert detect(text).verdict is Verdict.UNCLEAR, detect(text)


def test_operator_phrases_add_to_the_built_in_words() -> None:
    assert detect("叫掌柜的来").verdict is Verdict.NOT
    assert detect("叫掌柜的来", ["掌柜"]).verdict is Verdict.REQUEST
    assert detect("不用找掌柜", ["掌柜"]).verdict is Verdict.NOT


@pytest.mark.parametrize("text", ["是的", "对", "嗯", "需要", "好的，麻烦了", "嗯嗯", "是的需要", "ＯＫ", "转吧"])
def test_yes_to_the_ask_back(text: str) -> None:
    assert is_yes(text)


@pytest.mark.parametrize("text", ["不用", "不是", "我想问问退货", "算了", "是不是要收费"])
def test_not_a_yes(text: str) -> None:
    assert not is_yes(text)


def test_negative_wording() -> None:
    assert negative_word("你们这什么垃圾服务") == "垃圾"
    assert negative_word("我要投诉") == "投诉" and negative_word("气死我了！") == "气死"
    assert negative_word("请问怎么退货") is None


def _labelled(name: str) -> list[tuple[str, str]]:
    return [(e.label, e.text) for e in read(DATA / name)]  # the bench's reader: it checks every label


def _score(name: str) -> HandoffScore:
    """The detector's figures on a shipped set, counted as ``kefu eval`` counts them."""
    return handoff_score((label, str(detect(text).verdict)) for label, text in _labelled(name))


def test_the_real_set_meets_the_targets() -> None:  # bench/handoff_eval.py prints the full figures
    score = _score("real.tsv")
    assert score.messages > 700 and score.requests > 80
    assert score.recall is not None and score.precision is not None
    assert score.recall >= 0.98 and score.precision >= 0.95, score


def test_the_hand_written_edge_cases_all_pass() -> None:
    for label, text in _labelled("edge_cases.tsv"):
        verdict = detect(text).verdict
        assert verdict is Verdict(label) or (label == "unclear" and verdict is not Verdict.NOT), (text, verdict)


# General readings added after the two held-out checks (docs/BENCHMARKS.md); hand-written examples, not their lines.
@pytest.mark.parametrize(("text", "verdict"), [
    ("帮我人工解绑银行卡", Verdict.NOT),  # 人工 right before a verb that changes an account: "manually"
    ("能人工延期吗", Verdict.NOT),
    ("我要人工开发票", Verdict.REQUEST),  # after a verb of asking it is a person again
    ("找人工退款", Verdict.REQUEST),
    ("这里是淘宝人工客服吗", Verdict.UNCLEAR),  # are you a person, with words between 是 and 人工
    ("人工客服淘宝能用花呗吗", Verdict.NOT),  # addressed to 人工客服, a yes/no question of its own
    ("这个转接线能充电吗", Verdict.NOT),  # 转接线/转接头: a device, not a transfer
    ("我要找人签收快递", Verdict.NOT),  # someone to run an errand
    ("我已经问完客服", Verdict.NOT),  # 问完: done
    ("客服回复了", Verdict.NOT),
    ("退款应该找哪个客服", Verdict.NOT),  # which agent to contact: answerable
    ("如果明天还没到，我就找人工", Verdict.UNCLEAR),  # a condition in the clause before
    # a long message: a call for attention asks as a question ("人呢"), not as "有人" in a sentence
    ("我买的电饭煲内胆有划痕，想换一个新的，请问怎么操作，订单号12345678，地址不变 人呢", Verdict.REQUEST),
    ("我们店一直都有团 有人 但是订单很少 是怎么回事呢 有没有什么办法提高一下我们的成团率", Verdict.NOT),
])
def test_general_readings_from_the_held_out_checks(text: str, verdict: Verdict) -> None:
    assert detect(text).verdict is verdict, detect(text)


# The held-out sets were blind when first measured (heldout.tsv: recall 94.4 %, precision 80.0 %; heldout2.tsv: 92.0 %
# and 80.4 %); the rules changed after reading their errors, so they are no longer blind: these floors, measured after
# the change, only keep the figures from falling.
@pytest.mark.parametrize(("name", "recall_floor", "precision_floor"), [("heldout.tsv", 0.94, 0.94),
                                                                       ("heldout2.tsv", 1.0, 0.92)])
def test_the_held_out_sets_keep_their_figures(name: str, recall_floor: float, precision_floor: float) -> None:
    score = _score(name)
    assert score.recall is not None and score.precision is not None
    assert score.recall >= recall_floor and score.precision >= precision_floor, score


# ---- decide() ---------------------------------------------------------------------------------------------------

def test_a_request_hands_off_or_is_answered_honestly() -> None:
    settings = Settings()
    assert decide(settings, Message("帮我接个人工"), HandOff.PERSON) == Decision(
        Action.HAND_OFF, "asks_for_person", settings.handoff_reply, ReplySource.HANDOFF)
    assert decide(settings, Message("有没有真人"), HandOff.NOBODY) == Decision(
        Action.ANSWER, "asks_for_person_none_available", settings.handoff_unavailable_reply, ReplySource.RULE)
    assert decide(settings, Message("人工客服就不用了"), HandOff.PERSON).action is Action.GENERATE
    assert decide(settings, Message("人工客服几点上班？"), HandOff.PERSON).action is Action.GENERATE


def test_an_unclear_message_is_asked_back_and_a_yes_hands_off() -> None:
    settings = Settings()
    asked = decide(settings, Message("你是机器人吗"), HandOff.PERSON)
    assert asked == Decision(Action.ANSWER, "asks_for_person_unclear", "您是需要转接人工客服吗？", ReplySource.RULE)
    yes = decide(settings, Message("是的", asked_back=True), HandOff.PERSON)
    assert yes == Decision(Action.HAND_OFF, "asks_for_person_confirmed", settings.handoff_reply, ReplySource.HANDOFF)
    assert decide(settings, Message("是的"), HandOff.PERSON).action is Action.GENERATE  # nothing was asked
    assert decide(settings, Message("不用了", asked_back=True), HandOff.PERSON).action is Action.GENERATE
    # never asked twice in a row, and never where nobody could take over
    assert decide(settings, Message("你是机器人吗", asked_back=True), HandOff.PERSON).action is Action.GENERATE
    assert decide(settings, Message("你是机器人吗"), HandOff.NOBODY).action is Action.GENERATE
    assert decide(settings, Message("是的", asked_back=True), HandOff.NOBODY).action is Action.GENERATE
    # nor where no worker could carry out the yes (the phone call hands over by itself)
    assert decide(settings, Message("你是机器人吗", follows_up=False), HandOff.PERSON).action is Action.GENERATE


def test_failed_answers_hand_off_after_n() -> None:
    settings = Settings()
    assert decide(settings, Message("还是不行", failed_answers=1), HandOff.PERSON).action is Action.GENERATE
    assert decide(settings, Message("还是不行", failed_answers=2), HandOff.PERSON) == Decision(
        Action.HAND_OFF, "failed_answers", settings.handoff_failures_reply, ReplySource.HANDOFF)
    honest = decide(settings, Message("还是不行", failed_answers=2), HandOff.NOBODY)
    assert honest == Decision(Action.ANSWER, "failed_answers_none_available",
                              settings.handoff_failures_unavailable_reply, ReplySource.RULE)
    off = Settings(handoff_after_failures=0)
    assert decide(off, Message("还是不行", failed_answers=9), HandOff.PERSON).action is Action.GENERATE


def test_negative_wording_hands_off_where_a_person_can_take_it() -> None:
    settings = Settings()
    assert decide(settings, Message("你们这什么垃圾服务，气死我了"), HandOff.PERSON) == Decision(
        Action.HAND_OFF, "negative_sentiment", settings.handoff_negative_reply, ReplySource.HANDOFF)
    assert decide(settings, Message("你们这什么垃圾服务，怎么退货"), HandOff.NOBODY).action is Action.GENERATE
    off = Settings(handoff_on_negative=False)
    assert decide(off, Message("垃圾"), HandOff.PERSON).action is Action.GENERATE


def test_per_channel_settings() -> None:
    settings = Settings(handoff_channels={
        "web": {"detect": False, "on_negative": False}, "wecom_kf": {"phrases": ["掌柜"], "after_failures": 1}})
    assert decide(settings, Message("转人工", channel="web"), HandOff.PERSON).action is Action.GENERATE
    assert decide(settings, Message("垃圾", channel="web"), HandOff.PERSON).action is Action.GENERATE
    assert decide(settings, Message("转人工", channel="wechat_mp"), HandOff.PERSON).action is Action.HAND_OFF
    assert decide(settings, Message("叫掌柜的来", channel="wecom_kf"), HandOff.PERSON).action is Action.HAND_OFF
    assert decide(settings, Message("叫掌柜的来", channel="wechat_mp"), HandOff.PERSON).action is Action.GENERATE
    assert decide(settings, Message("嗯", channel="wecom_kf", failed_answers=1), HandOff.PERSON).why == "failed_answers"
    assert person_request(settings, Message("转人工")) is Verdict.REQUEST  # no channel: the global settings


# ---- the worker's follow-up: what the stored replies say -------------------------------------------------------

@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(ConversationRecord(id=1, channel="wecom_kf", account="a", peer="p"))
        session.flush()
        yield session


def _exchange(session: Session, inbound_id: int, reply: str | None, source: ReplySource = ReplySource.MODEL) -> None:
    session.add(InboundRecord(id=inbound_id, conversation_id=1, channel="wecom_kf", account="a",
                              external_id=str(inbound_id), text="问题"))
    session.flush()
    if reply is not None:
        session.add(ReplyRecord(inbound_id=inbound_id, conversation_id=1, text=reply, source=source))
        session.flush()


def test_the_worker_reads_the_ask_back_and_failed_answers_from_stored_replies(session: Session) -> None:
    settings = Settings()
    fallback = settings.fallback_reply
    _exchange(session, 1, "您好", ReplySource.MODEL)
    _exchange(session, 2, fallback, ReplySource.FALLBACK)
    _exchange(session, 3, fallback, ReplySource.FALLBACK)
    _exchange(session, 4, None)
    assert conversation_state(session, settings, 1, 4, "wecom_kf") == (False, 2, False)
    assert conversation_state(session, settings, 1, 3, "wecom_kf") == (False, 1, False)
    assert decide_again(session, settings, "在吗", 1, 4, "wecom_kf", HandOff.PERSON).why == "failed_answers"
    assert decide_again(session, settings, "在吗", 1, 3, "wecom_kf", HandOff.PERSON).action is Action.GENERATE
    _exchange(session, 5, settings.handoff_ask_back_reply, ReplySource.RULE)
    _exchange(session, 6, None)
    assert conversation_state(session, settings, 1, 6, "wecom_kf") == (True, 0, False)
    assert decide_again(session, settings, "对的", 1, 6, "wecom_kf", HandOff.PERSON).why == "asks_for_person_confirmed"
    assert decide_again(session, settings, "退货怎么弄", 1, 6, "wecom_kf", HandOff.PERSON).action is Action.GENERATE


# ---- the worker carries the follow-up out (workers.answering.generate) -----------------------------------------

class _PersonPort(HandOffPort):
    """A channel with a person to hand over to, recording the conversations it began handing off."""

    begun: list[ConversationKey]

    def availability(self, account: str) -> HandOff:
        return HandOff.PERSON

    def begin(self, key: ConversationKey) -> None:
        self.begun.append(key)


class _NoModel:
    model_name = "no-model"

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no model here")  # stored as the fallback reply


@pytest.mark.parametrize("from_worker", [True, False])
def test_the_worker_hands_off_after_the_ask_back_without_the_model(clean_env: Path, from_worker: bool) -> None:
    settings = Settings(data_dir=clean_env / "var")
    upgrade(settings)
    sessions = make_session_factory(make_engine(settings))
    key = ConversationKey("wecom_kf", "kf", "p1")
    with transaction(sessions) as session:
        conversation = ConversationRecord(channel=key.channel, account=key.account, peer=key.peer)
        session.add(conversation)
        session.flush()
        rows = [InboundRecord(conversation_id=conversation.id, channel=key.channel, account=key.account,
                              external_id=str(n), kind="text", text=text, status="queued")
                for n, text in enumerate(["你是机器人吗", "是的"])]
        session.add_all(rows)
        session.flush()
        store_reply(session, inbound_id=rows[0].id, conversation_id=conversation.id, channel=key.channel,
                    answer=Answer(settings.handoff_ask_back_reply, ReplySource.RULE, why="asks_for_person_unclear"))
    with sessions() as session:
        second = session.get(InboundRecord, rows[1].id)
        assert second is not None
        session.expunge(second)
    port = _PersonPort(settings, None)  # type: ignore[arg-type]
    port.begun, port.from_worker = [], from_worker
    rt = SimpleNamespace(settings=settings, sessions=sessions, llm=_NoModel(), kv=SimpleNamespace(get=lambda k: None),
                         channel=lambda name: SimpleNamespace(cache_context=False, streams=False),
                         handoff=lambda name: port, gray=None,
                         outbound=lambda name: SimpleNamespace(client_history=lambda *key: None),
                         knowledge=SimpleNamespace(lookup=lambda *texts: None), dense_faq=None,
                         context=SimpleNamespace(save=lambda *args: None))
    reply_id = answering.generate(rt, second, key)  # type: ignore[arg-type]
    with sessions() as session:
        reply = session.get(ReplyRecord, reply_id)
        assert reply is not None and reply.inbound_id == second.id
        if not from_worker:  # the model is asked (this one fails: the fallback), no hand-off it could not carry out
            assert reply.source == ReplySource.FALLBACK and port.begun == []
            return
        assert (reply.text, reply.source) == (settings.handoff_reply, ReplySource.HANDOFF)
    assert port.begun == [key]


def test_channel_settings_come_from_the_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_HANDOFF_CHANNELS", '{"web": {"detect": false}, "wecom_kf": {"phrases": ["掌柜"]}}')
    monkeypatch.setenv("KEFU_HANDOFF_KEYWORDS", '["店长"]')
    settings = Settings()
    assert not settings.handoff_channels["web"].detect and settings.handoff_channels["wecom_kf"].phrases == ["掌柜"]
    assert decide(settings, Message("叫店长来", channel="wechat_mp"), HandOff.PERSON).action is Action.HAND_OFF


def test_a_number_after_the_score_request_is_a_score(session: Session) -> None:
    settings = Settings()
    _exchange(session, 1, "您好", ReplySource.MODEL)
    session.add(ReplyRecord(inbound_id=None, conversation_id=1, text=settings.csat_request_reply,
                            source=ReplySource.CSAT, created_at=utcnow() - timedelta(seconds=1)))
    session.flush()
    _exchange(session, 2, None)
    assert conversation_state(session, settings, 1, 2, "wecom_kf").csat_asked
    decided = decide_again(session, settings, "５分", 1, 2, "wecom_kf", HandOff.PERSON)
    assert (decided.action, decided.why, decided.text, decided.source) == (
        Action.ANSWER, "csat_score", settings.csat_thanks_reply, ReplySource.CSAT)
    assert decide_again(session, settings, "还有个问题", 1, 2, "wecom_kf", HandOff.PERSON).action is Action.GENERATE
    # once thanked (a reply to message 2), the next "5" is an ordinary question again
    session.add(ReplyRecord(inbound_id=2, conversation_id=1, text=settings.csat_thanks_reply, source=ReplySource.CSAT))
    session.flush()
    _exchange(session, 3, None)
    assert not conversation_state(session, settings, 1, 3, "wecom_kf").csat_asked
    assert decide_again(session, settings, "5", 1, 3, "wecom_kf", HandOff.PERSON).action is Action.GENERATE

"""workers.intent_model: when the worker asks the model for a label, what it stores and audits, which route follows,
and that a failing, stalling or off-label model leaves the rules' intent in place. The engine here is scripted (the
real grammar with llama.cpp: tests/integration/test_intents.py); messages are hand-written."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from models.dialogue import Action, HandOff
from models.envelope import ConversationKey, Turn
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.replies import Answer, store_reply
from models.settings import Settings
from models.states import ReplySource
from models.tables import AuditEvent, ConversationRecord, InboundRecord, ReplyRecord
from workers import answering, intent_model
from workers.llm.engine import Generation

KEY = ConversationKey("wecom_kf", "kf", "p1")


class Chooser:
    """An engine that answers choose() with a scripted label (or fails, or stalls) and records what it was asked."""

    def __init__(self, label: str = "complaint", architecture: str = "qwen3", stall_s: float = 0.0,
                 fail: bool = False) -> None:
        self.architecture, self.label, self.stall_s, self.fail = architecture, label, stall_s, fail
        self.asked: list[tuple[list[Turn], str]] = []

    def load(self) -> None:
        return None

    def choose(self, turns: list[Turn], grammar: str, *, max_new: int = 24, deadline: float | None = None) -> Generation:
        self.asked.append((turns, grammar))
        time.sleep(self.stall_s)
        if self.fail:
            raise RuntimeError("the model failed")
        return Generation(self.label, "scripted", 10, 1, "stop", None, 0.0)

    def generate(self, *args: Any, **kwargs: Any) -> Generation:
        raise RuntimeError("no answers here")  # stored as the fallback reply


class Port:
    from_worker = True

    def __init__(self) -> None:
        self.begun: list[ConversationKey] = []

    def availability(self, account: str) -> HandOff:
        return HandOff.PERSON

    def beginning(self, key: ConversationKey) -> Any:
        import contextlib

        self.begun.append(key)
        return contextlib.nullcontext()

    def later_notice(self, account: str, text: str) -> str:
        return text


def runtime(settings: Settings, llm: Any) -> Any:
    upgrade(settings)
    sessions = make_session_factory(make_engine(settings))
    port = Port()
    return SimpleNamespace(settings=settings, sessions=sessions, llm=llm, kv=SimpleNamespace(get=lambda k: None),
                           channel=lambda name: SimpleNamespace(cache_context=False, streams=False),
                           handoff=lambda name: port, port=port,
                           outbound=lambda name: SimpleNamespace(client_history=lambda *key: None),
                           knowledge=SimpleNamespace(lookup=lambda *texts: None), dense_faq=None,
                           context=SimpleNamespace(save=lambda *args: None))


def inbound(rt: Any, *texts: str, intent: str | None = "out_of_scope", peer: str = KEY.peer) -> list[InboundRecord]:
    with transaction(rt.sessions) as session:
        conversation = ConversationRecord(channel=KEY.channel, account=KEY.account, peer=peer)
        session.add(conversation)
        session.flush()
        rows = [InboundRecord(conversation_id=conversation.id, channel=KEY.channel, account=KEY.account,
                              external_id=f"{peer}-{n}", kind="text", text=text, status="queued", intent=intent)
                for n, text in enumerate(texts)]
        session.add_all(rows)
        session.flush()
        for row in rows:
            session.expunge(row)
    return rows


def stored(rt: Any, row: InboundRecord) -> tuple[str | None, list[dict[str, Any]]]:
    with rt.sessions() as session:
        intent = session.scalars(select(InboundRecord.intent).where(InboundRecord.id == row.id)).one()
        audited = [e.detail for e in session.scalars(select(AuditEvent).where(
            AuditEvent.inbound_id == row.id, AuditEvent.kind == "intent"))]
    return intent, audited


def test_the_models_label_is_stored_audited_and_routed(clean_env: Path) -> None:
    chooser = Chooser("complaint")
    rt = runtime(Settings(data_dir=clean_env / "var", intent_model="on", intent_routes={"complaint": "hand_off"}),
                 chooser)
    [row] = inbound(rt, "今天天气怎么样")
    decision = intent_model.settle(rt, row, KEY, HandOff.PERSON, begun=time.monotonic())
    assert decision is not None and (decision.action, decision.why) == (Action.HAND_OFF, "intent_route:complaint")
    intent, audited = stored(rt, row)
    assert intent == "complaint" and len(audited) == 1
    assert (audited[0]["intent"], audited[0]["source"], audited[0]["confidence"]) == ("complaint", "model", 0.5)
    turns, grammar = chooser.asked[0]
    assert turns[-1] == Turn("user", "今天天气怎么样") and '"complaint"' in grammar and "ask_for_person" not in grammar


@pytest.mark.parametrize(("settings", "chooser", "text"), [
    ({"intent_model": "off"}, Chooser(), "今天天气怎么样"),  # off: never asked
    ({"intent_model": "auto"}, Chooser(architecture="llama"), "今天天气怎么样"),  # auto: a Qwen3 only
    ({"intent_model": "on"}, Chooser(), "我要退货"),  # the rules were sure
])
def test_the_model_is_asked_only_when_on_and_the_rules_were_unsure(clean_env: Path, settings: dict[str, Any],
                                                                   chooser: Chooser, text: str) -> None:
    rt = runtime(Settings(data_dir=clean_env / "var", **settings), chooser)
    [row] = inbound(rt, text)
    assert intent_model.settle(rt, row, KEY, HandOff.PERSON, begun=time.monotonic()) is None
    assert chooser.asked == [] and stored(rt, row) == ("out_of_scope", [])


@pytest.mark.parametrize("chooser", [Chooser(fail=True), Chooser(label="not_a_label"), Chooser(stall_s=3.0)],
                         ids=["fails", "off-label", "stalls"])
def test_a_model_that_gives_no_label_leaves_the_rules_intent(clean_env: Path, chooser: Chooser) -> None:
    settings = Settings(data_dir=clean_env / "var", intent_model="on", generation_soft_limit_s=1,
                        generation_hard_limit_s=2)
    rt = runtime(settings, chooser)
    [row] = inbound(rt, "今天天气怎么样")
    started = time.monotonic()
    assert intent_model.settle(rt, row, KEY, HandOff.PERSON, begun=started) is None
    assert time.monotonic() - started < 2.0  # a stalled step does not hold the answer past its deadline
    assert stored(rt, row) == ("out_of_scope", [])


def test_a_yes_to_the_ask_back_is_decided_before_the_models_intent(clean_env: Path) -> None:
    settings = Settings(data_dir=clean_env / "var", intent_model="on",
                        intent_routes={"greeting": "answer:您好，请问有什么可以帮您？"})
    chooser = Chooser("greeting")
    rt = runtime(settings, chooser)
    first, second = inbound(rt, "你是机器人吗", "是的")
    with transaction(rt.sessions) as session:
        store_reply(session, inbound_id=first.id, conversation_id=first.conversation_id, channel=KEY.channel,
                    answer=Answer(settings.handoff_ask_back_reply, ReplySource.RULE, why="asks_for_person_unclear"))
    reply_id = answering.generate(rt, second, KEY)
    with rt.sessions() as session:
        reply = session.get(ReplyRecord, reply_id)
        assert reply is not None and (reply.text, reply.source) == (settings.handoff_reply, ReplySource.HANDOFF)
    assert chooser.asked == [] and rt.port.begun == [KEY]
    # and a message the follow-up leaves alone gets the model's label and its route
    [third] = inbound(rt, "嗯嗯那个啥", peer="p2")
    reply_id = answering.generate(rt, third, KEY)
    with rt.sessions() as session:
        reply = session.get(ReplyRecord, reply_id)
        assert reply is not None and reply.text == "您好，请问有什么可以帮您？"
    assert stored(rt, third)[0] == "greeting"

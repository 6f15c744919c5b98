"""Personal data and moderation on a real stack (both backends): gateway, worker process, llama.cpp.

A customer's message with an ID-card, a bank-card and a mobile number is answered; the stored text
(``KEFU_PII_MASK_STORED=all``), the audit trail and both processes' logs hold them only masked. The
operator's moderation file refuses a message (a polite reply, no generation), stars a ``mask`` word in
what is stored, and is read again when it changes; every action is audited ``moderated`` with the rule id,
never the text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models.settings import Settings
from models.tables import AuditEvent, InboundRecord, ReplyRecord
from tests.integration.conftest import BACKENDS, Stack, recv_until, start_stack, wait_for

ID_CARD = "11010519491231002X"  # GB 11643-1999's own example
CARD = "6200000000000005"  # UnionPay's published test card
MOBILE = "13812345678"
SECRETS = (ID_CARD, CARD, MOBILE)
REFUSE = Settings().moderation_refuse_reply


@pytest.fixture(scope="module", params=BACKENDS)
def pstack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           tiny_gguf: Path) -> Iterator[tuple[Stack, Path, Path]]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    data_dir = tmp_path_factory.mktemp(f"pii-{backend}")
    words = data_dir / "moderation.txt"
    words.write_text("# operator's list\n赌博 refuse\n傻瓜 mask\n投诉升级 hand_off\n", encoding="utf-8")
    gateway_log = data_dir / "gateway.log"
    handler = logging.FileHandler(gateway_log, encoding="utf-8")  # the gateway runs in this process
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    s = start_stack(backend, data_dir, tiny_gguf, pg, rds, pii_mask_stored="all", moderation_file=str(words))
    try:
        yield s, words, gateway_log
    finally:
        s.close()
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def trail(stack: Stack, inbound_id: int) -> list[AuditEvent]:
    with stack.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.inbound_id == inbound_id)
                                    .order_by(AuditEvent.id)))


def say(stack: Stack, text: str) -> tuple[int, list[dict[str, Any]]]:
    _, token = stack.visitor()
    with stack.ws(token) as ws:
        ws.send(json.dumps({"type": "message", "text": text}))
        frames = recv_until(ws, lambda f: f["type"] == "reply", timeout=90)
        ws.send(json.dumps({"type": "ack", "reply_id": frames[-1]["reply_id"]}))
    return int(next(f["message_id"] for f in frames if f["type"] == "accepted")), frames


def stored_text(stack: Stack, inbound_id: int) -> str:
    with stack.sessions() as session:
        return session.scalars(select(InboundRecord.text).where(InboundRecord.id == inbound_id)).one()


def test_personal_data_is_answered_and_kept_masked(pstack: tuple[Stack, Path, Path]) -> None:
    stack, _, gateway_log = pstack
    text = f"你好，我的身份证号{ID_CARD}，银行卡{CARD}，手机{MOBILE}，帮我查一下退款"
    message_id, frames = say(stack, text)
    reply = frames[-1]
    assert reply["text"]  # answered (by the model, or its fallback)
    wait_for(lambda: "delivered" in [e.kind for e in trail(stack, message_id)], timeout=30)
    assert stored_text(stack, message_id) == ("你好，我的身份证号110105********002X，银行卡6200********0005，"
                                              "手机138****5678，帮我查一下退款")
    events = trail(stack, message_id)
    assert "generation_started" in [e.kind for e in events]
    with stack.sessions() as session:
        every_detail = json.dumps([e.detail for e in session.scalars(select(AuditEvent))], ensure_ascii=False)
        replies = " ".join(session.scalars(select(ReplyRecord.text)))
    streamed = "".join(f.get("text", "") for f in frames)
    worker_log = (stack.settings.data_dir / "worker.log").read_text(encoding="utf-8")
    for secret in SECRETS:
        for where, content in (("audit", every_detail), ("replies", replies), ("socket", streamed),
                               ("worker log", worker_log), ("gateway log", gateway_log.read_text(encoding="utf-8"))):
            assert secret not in content, f"{secret} in the {where}"


def test_a_refused_message_gets_the_polite_reply_and_is_audited(pstack: tuple[Stack, Path, Path]) -> None:
    stack, _, _ = pstack
    message_id, frames = say(stack, "哪里可以赌博")
    assert frames[-1]["text"] == REFUSE and not [f for f in frames if f["type"] == "token"]
    wait_for(lambda: "reply_stored" in [e.kind for e in trail(stack, message_id)], timeout=30)
    events = trail(stack, message_id)
    moderated = [e.detail for e in events if e.kind == "moderated"]
    assert moderated == [{"direction": "in", "action": "refuse", "rule": "keyword:2"}]
    assert "generation_started" not in [e.kind for e in events]
    assert "赌博" not in json.dumps([e.detail for e in events], ensure_ascii=False)


def test_hand_off_word_on_the_web_where_nobody_can_take_over_is_refused(pstack: tuple[Stack, Path, Path]) -> None:
    stack, _, _ = pstack
    message_id, frames = say(stack, "我要投诉升级")
    assert frames[-1]["text"] == REFUSE
    wait_for(lambda: "reply_stored" in [e.kind for e in trail(stack, message_id)], timeout=30)
    assert [e.detail for e in trail(stack, message_id) if e.kind == "moderated"] == [
        {"direction": "in", "action": "refuse", "rule": "keyword:4"}]


def test_a_masked_word_is_stored_starred_and_the_model_answers(pstack: tuple[Stack, Path, Path]) -> None:
    stack, _, _ = pstack
    message_id, _ = say(stack, "你们客服是傻瓜吗")
    assert stored_text(stack, message_id) == "你们客服是**吗"
    wait_for(lambda: "reply_stored" in [e.kind for e in trail(stack, message_id)], timeout=30)
    events = trail(stack, message_id)
    assert [e.detail for e in events if e.kind == "moderated"] == [
        {"direction": "in", "action": "mask", "rule": "keyword:3"}]
    assert "generation_started" in [e.kind for e in events]


def test_the_file_is_read_again_when_the_operator_edits_it(pstack: tuple[Stack, Path, Path]) -> None:
    stack, words, _ = pstack
    words.write_text(words.read_text(encoding="utf-8") + "代购 refuse\n", encoding="utf-8")
    message_id, frames = say(stack, "可以帮我代购吗")
    assert frames[-1]["text"] == REFUSE
    wait_for(lambda: "reply_stored" in [e.kind for e in trail(stack, message_id)], timeout=30)
    assert [e.detail["rule"] for e in trail(stack, message_id) if e.kind == "moderated"] == ["keyword:5"]

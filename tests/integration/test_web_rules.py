"""The web chat carries out the same dialogue decision as every other channel (models.dialogue.decide).

A real stack on both backends: an FAQ hit and a request for a person are answered at once by the
rules (no generation), reach the visitor's socket like any reply, and are audited with the rule that
decided; the web has no person to hand over to, so 转人工 gets the honest answer, never a promise.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from models.settings import Settings
from models.tables import AuditEvent, ReplyRecord
from tests.integration.conftest import BACKENDS, Stack, recv_until, start_stack, wait_for

FAQ = [{"keywords": ["发票"], "answer": "电子发票会在发货后24小时内发送到您的邮箱。"}]
UNAVAILABLE = Settings().handoff_unavailable_reply


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    s = start_stack(backend, tmp_path_factory.mktemp(f"web-rules-{backend}"), tiny_gguf, pg, rds, faq=FAQ)
    try:
        yield s
    finally:
        s.close()


def trail(stack: Stack, inbound_id: int) -> list[AuditEvent]:
    with stack.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.inbound_id == inbound_id)
                                    .order_by(AuditEvent.id)))


def ask(stack: Stack, text: str) -> tuple[int, dict[str, object]]:
    _, token = stack.visitor()
    with stack.ws(token) as ws:
        ws.send(json.dumps({"type": "message", "text": text}))
        frames = recv_until(ws, lambda f: f["type"] == "reply")
        ws.send(json.dumps({"type": "ack", "reply_id": frames[-1]["reply_id"]}))
    message_id = next(f["message_id"] for f in frames if f["type"] == "accepted")
    assert not [f for f in frames if f["type"] == "token"]  # nothing was generated
    return int(message_id), frames[-1]


@pytest.mark.parametrize(("text", "answer", "source", "rule"), [
    ("请问可以开发票吗？", FAQ[0]["answer"], "faq", "faq"),
    ("转人工", UNAVAILABLE, "rule", "asks_for_person_none_available"),
    ("我要找人工客服，发票的事", UNAVAILABLE, "rule", "asks_for_person_none_available"),  # asking for a person first
])
def test_rules_answer_on_the_web_without_the_model(stack: Stack, text: str, answer: str, source: str,
                                                   rule: str) -> None:
    message_id, reply = ask(stack, text)
    assert reply["text"] == answer and reply["message_id"] == message_id
    wait_for(lambda: "delivered" in [e.kind for e in trail(stack, message_id)], timeout=30)
    events = trail(stack, message_id)
    assert "generation_started" not in [e.kind for e in events]
    stored = next(e for e in events if e.kind == "reply_stored")
    assert (stored.detail["source"], stored.detail["rule"]) == (source, rule)
    with stack.sessions() as session:
        assert session.scalars(select(ReplyRecord.source).where(ReplyRecord.inbound_id == message_id)).one() == source


def test_declining_a_person_goes_to_the_model(stack: Stack) -> None:
    _, token = stack.visitor()
    with stack.ws(token) as ws:
        ws.send(json.dumps({"type": "message", "text": "不用转人工了，我再问一下"}))
        frames = recv_until(ws, lambda f: f["type"] == "reply")
    message_id = next(f["message_id"] for f in frames if f["type"] == "accepted")
    wait_for(lambda: "reply_stored" in [e.kind for e in trail(stack, message_id)], timeout=30)
    assert "generation_started" in [e.kind for e in trail(stack, message_id)]


def test_the_http_api_applies_the_rules_too(stack: Stack) -> None:
    visitor_id, token = stack.visitor()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=stack.gateway.http_url, timeout=10) as http:
        posted = http.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": "发票怎么开", "client_msg_id": "f1"},
                           headers=headers)
        assert posted.status_code == 202
        again = http.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": "发票怎么开", "client_msg_id": "f1"},
                          headers=headers)
        assert again.json() == {"message_id": posted.json()["message_id"], "duplicate": True}

        def history() -> list[dict[str, object]]:
            return list(http.get(f"/v1/web/conversations/{visitor_id}", headers=headers).json()["messages"])

        messages = wait_for(lambda: len(history()) == 2 and history(), timeout=30)
    assert [(m["role"], m["text"]) for m in messages] == [("user", "发票怎么开"), ("assistant", FAQ[0]["answer"])]

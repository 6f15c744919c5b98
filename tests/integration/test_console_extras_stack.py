"""The console extras seen from the customer's side, on a whole stack (gateway, Celery worker, llama.cpp; embedded
backend): a note never reaches the customer's web socket (the agent's reply written after it does, alone), and an
agent's reply made an FAQ in the console answers the same question from another visitor at once, without the model
(source ``approved``).

A module of its own: the gateway runs in this process, and the FAQ index is the process's (models.knowledge.
faq_cache), so another module's gateway must not be serving at the same time."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models.knowledge import faq_cache
from models.tables import AuditEvent, DeliveryRecord, InboundRecord, ReplyRecord
from tests.integration.conftest import Stack, recv_until, start_stack
from workers import user_command

PASSWORD = "correct horse battery"


def add_user(sessions: sessionmaker[Session], username: str, role: str, name: str) -> None:
    assert user_command.add(sessions, username, role, name, lambda: user_command.stdin_password(
        io.StringIO(PASSWORD + "\n")), io.StringIO()) == 0


def signed_in(http: httpx.Client, username: str) -> dict[str, Any]:
    page = http.get("/console/login")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    answer = http.post("/console/login", data={"username": username, "password": PASSWORD, "csrf": found.group(1)})
    assert answer.status_code == 303, answer.text
    me: dict[str, Any] = http.get("/console/api/me").json()
    http.headers["X-CSRF-Token"] = me["csrf"]
    return me


QUESTION = "礼品卡可以和优惠券一起用吗"
AGENT_ANSWER = "可以，礼品卡和优惠券可以同时使用。"
NOTE = "内部备注：这位客户上周投诉过"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    s = start_stack("embedded", tmp_path_factory.mktemp("console-extras-stack"), tiny_gguf, None, None,
                    secret_key="test-secret", intent_model="off")
    try:
        add_user(s.sessions, "amy", "agent", "小艾")
        add_user(s.sessions, "boss", "admin", "主管")
        yield s
    finally:
        s.close()
        faq_cache.install([])


def ask(stack: Stack, text: str) -> tuple[dict[str, Any], ReplyRecord]:
    """The question from a new visitor over the web socket: the reply frame and the stored reply."""
    _, token = stack.visitor()
    with stack.ws(token) as ws:
        ws.send(json.dumps({"type": "message", "text": text}))
        frame = recv_until(ws, lambda f: f["type"] == "reply")[-1]
    with stack.sessions() as session:
        stored = session.get(ReplyRecord, frame["reply_id"])
    assert stored is not None
    return frame, stored


@pytest.mark.timeout(300)
def test_a_note_never_reaches_the_customer_and_an_agents_answer_becomes_an_faq(stack: Stack) -> None:
    _, token = stack.visitor()
    with stack.ws(token) as ws, stack.http() as agent, stack.http() as admin:
        ws.send(json.dumps({"type": "message", "text": QUESTION}))
        frames = recv_until(ws, lambda f: f["type"] == "reply")
        message_id = next(f["message_id"] for f in frames if f["type"] == "accepted")
        with stack.sessions() as session:
            inbound = session.get(InboundRecord, message_id)
            assert inbound is not None
            conversation_id = inbound.conversation_id
        signed_in(agent, "amy")
        signed_in(admin, "boss")
        base = f"/console/api/conversations/{conversation_id}"
        assert agent.post(f"{base}/notes", json={"text": NOTE}).status_code == 201
        assert agent.post(f"{base}/claim").status_code == 200
        sent = agent.post(f"{base}/reply", json={"text": AGENT_ANSWER})
        assert sent.status_code == 201, sent.text
        reply_id = sent.json()["reply_id"]
        # the agent's reply, written after the note, reaches the socket; nothing before it carries the note
        after = recv_until(ws, lambda f: f["type"] == "reply" and f.get("reply_id") == reply_id)
        assert after[-1]["text"] == AGENT_ANSWER
        assert not any(NOTE in json.dumps(f, ensure_ascii=False) for f in frames + after)
        with stack.sessions() as session:
            texts = session.scalars(select(ReplyRecord.text).where(ReplyRecord.conversation_id == conversation_id))
            assert NOTE not in list(texts)
            assert session.scalars(select(DeliveryRecord.id).join(ReplyRecord, ReplyRecord.id == DeliveryRecord.reply_id)
                                   .where(ReplyRecord.text == NOTE)).first() is None
        assert agent.post(f"{base}/hand-back").status_code == 200

        draft = admin.get(f"/console/api/replies/{reply_id}/faq-draft").json()
        assert draft["question"] == QUESTION
        made = admin.post("/console/api/answers", json={"reply_id": reply_id, "question": draft["question"],
                                                        "answer": draft["answer"]})
        assert made.status_code == 201, made.text

    # another visitor asks the same question: the gateway's FAQ sync (every 5 s) picks the approval up, then the
    # answer comes from the FAQ path, without the model
    deadline = time.monotonic() + 60
    reply, stored = ask(stack, QUESTION)
    while stored.source != "approved" and time.monotonic() < deadline:
        time.sleep(1)
        reply, stored = ask(stack, QUESTION)
    assert (stored.source, reply["text"], stored.model) == ("approved", AGENT_ANSWER, None)
    with stack.sessions() as session:
        why = session.scalar(select(AuditEvent.detail).where(AuditEvent.reply_id == stored.id,
                                                             AuditEvent.kind == "reply_stored"))
    assert why is not None and why["rule"] == f"approved_answer:{reply_id}"

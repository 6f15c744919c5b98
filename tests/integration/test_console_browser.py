"""The human desk end to end in Debian's headless Chromium (tests/browser/console_desk.mjs), on a real stack (real
gateway, real Celery worker, the tiny model) on both backends: an agent made by ``kefu user add``'s code path logs
into the console; a visitor on the chat page asks for a person (转人工); the console's inbox shows the conversation
waiting without a reload; the agent claims it and replies, and the visitor's page shows the reply live; the agent
hands back, and the model answers the visitor's next message. While the agent holds it, the desk's ``typing``
events (published here on the real bus, as the chat page does while the visitor types) show 对方正在输入…. The
database confirms each step: the conversation the console took is the visitor's, the agent's reply is stored as the
agent's and delivered, the answer after the hand-back is the model's. With KEFU_UPDATE_SCREENSHOTS=1 the run saves
docs/console-inbox.png and docs/console-conversation.png (otherwise a test run leaves the checkout as it was).

Needs `make system` (chromium, a CJK font) and `make tests/browser/node_modules`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models import desk
from models.infra.bus import make_bus
from models.states import Handler, ReplySource
from models.tables import AuditEvent, ConversationRecord, DeliveryRecord, InboundRecord, ReplyRecord
from tests.integration.conftest import Stack, wait_for
from workers import user_command

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "browser" / "console_desk.mjs"
CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "console-browser-pass"
REPLY = "您好，我是客服小爱，您的问题我来处理。"
QUESTION = "请问你们周末发货吗？"


def run_console(stack: Stack, inbox_shot: Path, conversation_shot: Path) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make system`"
    assert (SCRIPT.parent / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is not installed: run `make tests/browser/node_modules`"
    command = [node, str(SCRIPT), "--url", stack.gateway.http_url, "--username", "xiaoai", "--password", PASSWORD,
               "--agent-name", "小爱", "--promise", stack.settings.handoff_reply, "--reply", REPLY,
               "--question", QUESTION, "--inbox-shot", str(inbox_shot), "--conversation-shot", str(conversation_shot),
               "--timeout-ms", "60000"]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, f"the console failed in Chromium (exit {run.returncode}):\n{run.stderr}\n{run.stdout}"
    return dict(json.loads(run.stdout))


@pytest.mark.timeout(480)
def test_an_agent_takes_over_a_web_conversation_and_hands_it_back(stack: Stack, tmp_path: Path) -> None:
    assert user_command.add(stack.sessions, "xiaoai", "agent", "小爱", lambda: PASSWORD, io.StringIO()) == 0
    inbox_shot, conversation_shot = tmp_path / "console-inbox.png", tmp_path / "console-conversation.png"

    typing = threading.Thread(target=customer_typing, args=(stack,), daemon=True)
    typing.start()
    result = run_console(stack, inbox_shot, conversation_shot)
    typing.join(timeout=30)

    assert result["ok"] is True and all(c["ok"] for c in result["checks"]), result["checks"]
    conversation_id = int(result["conversation_id"])
    with stack.sessions() as session:
        conversation = session.get(ConversationRecord, conversation_id)
        assert conversation is not None and conversation.channel == "web"
        assert conversation.handler == Handler.BOT and conversation.agent_id is None  # handed back
        texts = list(session.scalars(select(InboundRecord.text).where(InboundRecord.conversation_id == conversation_id)
                                     .order_by(InboundRecord.id)))
        assert texts == ["转人工", QUESTION]  # the conversation the console took is the visitor's
        agent_reply = session.get(ReplyRecord, int(result["reply"]["reply_id"]))
        assert agent_reply is not None and agent_reply.conversation_id == conversation_id
        assert (agent_reply.source, agent_reply.text, agent_reply.inbound_id) == (ReplySource.AGENT, REPLY, None)
        answer = session.get(ReplyRecord, int(result["answer"]["reply_id"]))
        assert answer is not None and answer.source == ReplySource.MODEL and answer.text == result["answer"]["text"]
        question = session.get(InboundRecord, answer.inbound_id)
        assert question is not None and question.text == QUESTION
    kinds_of = [k for k in _kinds(stack, conversation_id)]
    for step in ("desk_queued", "desk_claimed", "desk_handed_back", "generation_started"):
        assert step in kinds_of, kinds_of
    assert kinds_of.index("desk_claimed") < kinds_of.index("desk_handed_back") < kinds_of.index("generation_started")
    wait_for(lambda: _delivery(stack, agent_reply.id) in ("sent", "delivered"), timeout=30)

    who = [m["who"] for m in result["transcript"]]
    assert "customer" in who and "agent" in who and "bot" in who
    for shot in (inbox_shot, conversation_shot):
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if stack.backend == "redis-postgres" and os.environ.get("KEFU_UPDATE_SCREENSHOTS"):  # the docs' pictures, on request
        shutil.copyfile(inbox_shot, REPO / "docs" / "console-inbox.png")
        shutil.copyfile(conversation_shot, REPO / "docs" / "console-conversation.png")


def customer_typing(stack: Stack) -> None:
    """The desk's ``typing`` events, on the real bus, while an agent holds a web conversation: what the chat page
    publishes as the visitor types (the console side is what this test checks)."""
    bus = make_bus(stack.settings)
    try:
        held = wait_for(lambda: _held(stack), timeout=180, interval=0.1)
        for _ in range(40):  # while the agent holds it (the conversation-view screenshot comes after the hand-back)
            if _held(stack) != held:
                break
            bus.publish(desk.TOPIC, desk.event("typing", held))
            time.sleep(0.25)
    finally:
        getattr(bus, "close", lambda: None)()


def _held(stack: Stack) -> int | None:
    with stack.sessions() as session:
        return session.scalars(select(ConversationRecord.id).where(ConversationRecord.handler == Handler.AGENT)).first()


def _kinds(stack: Stack, conversation_id: int) -> list[str]:
    with stack.sessions() as session:
        return list(session.scalars(select(AuditEvent.kind).where(AuditEvent.conversation_id == conversation_id)
                                    .order_by(AuditEvent.id)))


def _delivery(stack: Stack, reply_id: int) -> str | None:
    with stack.sessions() as session:
        return session.scalars(select(DeliveryRecord.status).where(DeliveryRecord.reply_id == reply_id)).first()

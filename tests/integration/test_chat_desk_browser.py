"""The chat page while a person serves the visitor, in Debian's headless Chromium (tests/browser/chat_desk.mjs).

A real stack (embedded backend) with an agent online serves the page. The visitor types 转人工 and a question;
this test, as the console would, claims the conversation once the question is stored for the person, sends two
agent messages and hands the conversation back (which asks for a score). The page shows each agent message in its
own bubble marked 人工客服 <name>, the score request with a 1-5 widget whose click stores the score (a CsatRecord for
the agent's round, checked here) and shows the thanks, and the marked agent messages again after a reload.
Needs `make system` (chromium, a CJK font) and `make tests/browser/node_modules`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models import csat, desk
from models.envelope import utcnow
from models.infra.db import transaction
from models.infra.queues import Publisher, make_celery
from models.states import DeliveryStatus, Handler, InboundStatus, Presence, Role
from models.tables import AgentRecord, ConversationRecord, CsatRecord, DeliveryRecord, InboundRecord
from tests.integration.conftest import Stack, start_stack, wait_for

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "browser" / "chat_desk.mjs"
CHROMIUM = Path("/usr/bin/chromium")
AGENT_TEXTS = ("您好，我是人工客服小李，请把订单号发给我。", "已为您登记换货，新鞋子明天发出。")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    s = start_stack("embedded", tmp_path_factory.mktemp("chat-desk-browser"), tiny_gguf, None, None,
                    desk_presence_s=86400.0)
    try:
        yield s
    finally:
        s.close()


def _agent(stack: Stack) -> int:
    with transaction(stack.sessions) as session:
        agent = AgentRecord(username="li", display_name="小李", role=Role.AGENT, password_hash="x",
                            status=Presence.ONLINE, seen_at=utcnow())
        session.add(agent)
        session.flush()
        return int(agent.id)


def _waiting_with_question(stack: Stack) -> int | None:
    """The conversation that waits for a person and has the visitor's question stored for them."""
    with stack.sessions() as s:
        return s.scalar(select(ConversationRecord.id).join(InboundRecord,
                                                           InboundRecord.conversation_id == ConversationRecord.id)
                        .where(ConversationRecord.handler == Handler.WAITING,
                               InboundRecord.status == InboundStatus.HUMAN).limit(1))


def _sent(stack: Stack, reply_ids: list[int]) -> bool:
    with stack.sessions() as s:
        statuses = list(s.scalars(select(DeliveryRecord.status).where(DeliveryRecord.reply_id.in_(reply_ids))))
    return len(statuses) == len(reply_ids) and all(st in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED)
                                                   for st in statuses)


@pytest.mark.timeout(420)
def test_the_chat_page_shows_the_agent_and_takes_a_score(stack: Stack, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make system`"
    assert (SCRIPT.parent / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is not installed: run `make tests/browser/node_modules`"
    settings = stack.settings
    agent_id = _agent(stack)
    publisher = Publisher(make_celery(settings, gateway=True))
    command = [node, str(SCRIPT), "--url", f"{stack.gateway.http_url}/", "--screenshot", str(tmp_path / "desk.png"),
               "--promise", settings.handoff_reply, "--agent-name", "小李", "--agent-text", AGENT_TEXTS[0],
               "--agent-text-2", AGENT_TEXTS[1], "--csat-request", settings.csat_request_reply,
               "--thanks", settings.csat_thanks_reply, "--timeout-ms", "60000"]
    page = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        conversation_id = wait_for(lambda: _waiting_with_question(stack), timeout=120)
        with transaction(stack.sessions) as session:  # what the console's claim and reply do
            desk.claim(session, conversation_id, agent_id)
            replies = [desk.store_agent_reply(session, conversation_id, agent_id, text) for text in AGENT_TEXTS]
        for reply_id in replies:
            publisher.deliver(reply_id)
        wait_for(lambda: _sent(stack, replies), timeout=60)
        with transaction(stack.sessions) as session:  # the console's hand-back
            assert desk.hand_back(session, conversation_id, agent_id)
            request_id = csat.ask(session, conversation_id, agent_id, settings)
        assert request_id is not None
        publisher.deliver(request_id)
        out, err = page.communicate(timeout=240)
    finally:
        if page.poll() is None:
            page.kill()
            page.communicate()
    assert page.returncode == 0, f"the chat page failed in Chromium (exit {page.returncode}):\n{err}\n{out}"
    result: dict[str, Any] = json.loads(out)
    assert result["ok"] and result["csat_posts"]
    with stack.sessions() as s:
        rows = s.execute(select(CsatRecord.score, CsatRecord.agent_id, CsatRecord.round, CsatRecord.channel)
                         .where(CsatRecord.conversation_id == conversation_id)).all()
    assert [tuple(r) for r in rows] == [(5, agent_id, 1, "web")]

"""The web chat with a person, end to end (real gateway, worker, bus): 转人工 queues the conversation, the visitor's
typing reaches the console's bus topic only while a person holds it, an agent's message reaches the socket marked
``source: agent`` with the agent's name (and again on reconnect until acknowledged, and in the history), hand-back
sends the score request (``source: csat``), ``POST /v1/web/csat`` stores the score for that agent's round, and the
model answers again with the agent's messages in its context."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from channels.web import TYPING_INTERVAL_S, WebAdapter
from models import csat, desk, transcript
from models.envelope import ConversationKey, Turn, utcnow
from models.infra.bus import make_listener
from models.infra.db import transaction
from models.infra.queues import Publisher, make_celery
from models.settings import Settings
from models.states import Handler, InboundStatus, Presence, Role
from models.tables import AgentRecord, AuditEvent, ConversationRecord, CsatRecord, InboundRecord
from tests.integration.conftest import BACKENDS, Stack, recv_until, start_stack, wait_for

AGENT_TEXT = "您好，我是人工客服小李。退货申请已经替您提交了。"


class DeskEvents:
    """Everything published on the bus topic ``desk``, collected by a listener on its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.events: list[dict[str, Any]] = []
        self._settings = settings
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _run(self) -> None:
        listener = make_listener(self._settings)
        await listener.start()
        queue = listener.subscribe(desk.TOPIC)
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            while True:
                self.events.append(await queue.get())
        except asyncio.CancelledError:
            pass
        finally:
            await listener.stop()

    def of(self, conversation_id: int, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("conversation_id") == conversation_id and e.get("type") == kind]

    def close(self) -> None:
        assert self._loop is not None
        for task in asyncio.all_tasks(self._loop):
            self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join(10)


@pytest.fixture(scope="module", params=BACKENDS)
def web(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    backend = request.param
    pg = request.getfixturevalue("module_pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    stack = start_stack(backend, tmp_path_factory.mktemp(f"webdesk-{backend}"), tiny_gguf, pg, rds,
                        desk_presence_s=86400.0)
    try:
        yield stack
    finally:
        stack.close()


def _agent(stack: Stack) -> int:
    with transaction(stack.sessions) as session:
        agent = AgentRecord(username=f"li-{stack.backend}", display_name="小李", role=Role.AGENT, password_hash="x",
                            status=Presence.ONLINE, seen_at=utcnow())
        session.add(agent)
        session.flush()
        return int(agent.id)


def _conversation(stack: Stack, visitor_id: str) -> int:
    with stack.sessions() as s:
        found = transcript.conversation_id(s, ConversationKey("web", stack.settings.web_account, visitor_id))
    assert found is not None
    return found


def _handler(stack: Stack, conversation_id: int) -> str:
    with stack.sessions() as s:
        return str(s.scalar(select(ConversationRecord.handler).where(ConversationRecord.id == conversation_id)))


def _kinds(stack: Stack, inbound_id: int) -> list[str]:
    with stack.sessions() as s:
        return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id).order_by(AuditEvent.id)))


def _is_reply(source: str) -> Any:
    return lambda f: f.get("type") == "reply" and f.get("source") == source


def test_typing_events_are_throttled_per_conversation() -> None:
    adapter = WebAdapter.__new__(WebAdapter)  # only the throttle's state is needed
    adapter._typing_at = {}
    assert adapter.typing_due("v1", now=100.0)
    assert not adapter.typing_due("v1", now=100.0 + TYPING_INTERVAL_S / 2)
    assert adapter.typing_due("v2", now=100.5)  # another conversation has its own allowance
    assert adapter.typing_due("v1", now=100.0 + TYPING_INTERVAL_S)


def test_a_person_serves_a_web_visitor_and_hands_back(web: Stack) -> None:
    settings = web.settings
    agent_id = _agent(web)
    publisher = Publisher(make_celery(settings, gateway=True))
    events = DeskEvents(settings)
    bot_visitor, bot_token = web.visitor()
    visitor_id, token = web.visitor()
    headers = {"Authorization": f"Bearer {token}"}
    try:
        # a visitor the bot serves: typing goes nowhere (its message event, published after, comes alone)
        with web.ws(bot_token) as ws:
            ws.send('{"type": "message", "text": "你好", "client_msg_id": "b1"}')
            recv_until(ws, lambda f: f.get("type") == "reply")
            bot_conversation = _conversation(web, bot_visitor)
            ws.send('{"type": "typing"}')
            ws.send('{"type": "message", "text": "在吗", "client_msg_id": "b2"}')
            recv_until(ws, lambda f: f.get("type") == "accepted")
        wait_for(lambda: len(events.of(bot_conversation, "message")) == 2)
        assert events.of(bot_conversation, "typing") == []

        with web.ws(token) as ws:
            ws.send('{"type": "message", "text": "转人工", "client_msg_id": "m1"}')
            notice = recv_until(ws, lambda f: f.get("type") == "reply")[-1]
            assert (notice["text"], notice["source"]) == (settings.handoff_reply, "handoff")
            conversation_id = _conversation(web, visitor_id)
            assert _handler(web, conversation_id) == Handler.WAITING
            ws.send('{"type": "typing"}')  # a person holds it: the console hears the visitor typing
            wait_for(lambda: events.of(conversation_id, "typing"))
            assert events.of(conversation_id, "typing") == [{"type": "typing", "conversation_id": conversation_id}]
            ws.send('{"type": "message", "text": "我要退货，订单 20240501", "client_msg_id": "m2"}')
            accepted = recv_until(ws, lambda f: f.get("type") == "accepted")[-1]
            wait_for(lambda: _kinds(web, accepted["message_id"])[-1:] == ["human_owned"])

            with transaction(web.sessions) as session:
                desk.claim(session, conversation_id, agent_id)
                agent_reply = desk.store_agent_reply(session, conversation_id, agent_id, AGENT_TEXT)
            publisher.deliver(agent_reply)
            frame = recv_until(ws, _is_reply("agent"))[-1]
            assert frame == {"type": "reply", "reply_id": agent_reply, "message_id": None, "text": AGENT_TEXT,
                             "truncated": False, "source": "agent", "agent_name": "小李"}

        with web.ws(token) as ws:  # not acknowledged: sent again on reconnect
            again = recv_until(ws, lambda f: f.get("reply_id") == agent_reply)[-1]
            assert again["source"] == "agent" and again["text"] == AGENT_TEXT
            ws.send(f'{{"type": "ack", "reply_id": {agent_reply}}}')

            with transaction(web.sessions) as session:
                assert desk.hand_back(session, conversation_id, agent_id)
                request_id = csat.ask(session, conversation_id, agent_id, settings)
            assert request_id is not None
            publisher.deliver(request_id)
            asked = recv_until(ws, _is_reply("csat"))[-1]
            assert (asked["reply_id"], asked["text"], asked["message_id"]) == (request_id, settings.csat_request_reply,
                                                                                None)

        with web.http() as http:
            history = http.get(f"/v1/web/conversations/{visitor_id}", headers=headers).json()["messages"]
            assert [(m["role"], m.get("source"), m["text"]) for m in history][2:] == [
                ("user", None, "我要退货，订单 20240501"), ("assistant", "agent", AGENT_TEXT),
                ("assistant", "csat", settings.csat_request_reply)]
            assert history[3]["agent_name"] == "小李" and history[3]["reply_to"] is None
            assert http.post("/v1/web/csat", json={"score": 6}, headers=headers).status_code == 422
            assert http.post("/v1/web/csat", json={"score": "5"}, headers=headers).status_code == 422
            assert http.post("/v1/web/csat", json={"score": 5}).status_code == 401
            first = http.post("/v1/web/csat", json={"score": 3}, headers=headers)
            assert first.status_code == 201 and first.json()["thanks"] == settings.csat_thanks_reply
            assert http.post("/v1/web/csat", json={"score": 5, "comment": "很耐心"}, headers=headers).status_code == 201
        with web.sessions() as s:
            rows = s.execute(select(CsatRecord.score, CsatRecord.comment, CsatRecord.agent_id, CsatRecord.round)
                             .where(CsatRecord.conversation_id == conversation_id)).all()
        assert [tuple(r) for r in rows] == [(5, "很耐心", agent_id, 1)]  # re-rating replaced the score

        with web.ws(token) as ws:  # typed right after the request, a number is a score too
            ws.send('{"type": "message", "text": "4分", "client_msg_id": "m-score"}')
            thanks = recv_until(ws, lambda f: f.get("type") == "reply" and f.get("message_id") is not None
                                and f["source"] == "csat")[-1]
            assert thanks["text"] == settings.csat_thanks_reply
            assert "generation_started" not in _kinds(web, thanks["message_id"])
        with web.sessions() as s:
            assert s.execute(select(CsatRecord.score, CsatRecord.round).where(
                CsatRecord.conversation_id == conversation_id)).all() == [(4, 1)]

        with web.ws(token) as ws:  # the model answers again, knowing what the person said
            ws.send('{"type": "message", "text": "那退款多久到账？", "client_msg_id": "m3"}')
            answer = recv_until(ws, lambda f: f.get("type") == "reply" and f.get("message_id") is not None
                                and f["source"] in ("model", "fallback"))[-1]
            wait_for(lambda: "generation_started" in _kinds(web, answer["message_id"]))
        with web.sessions() as s:
            status = s.scalar(select(InboundRecord.status).where(InboundRecord.id == answer["message_id"]))
            turns = transcript.context_turns(s, conversation_id, answer["message_id"], settings.context_turns)
        assert status == InboundStatus.ANSWERED
        assert Turn("assistant", AGENT_TEXT) in turns
        assert turns[-4:] == [Turn("user", "我要退货，订单 20240501"), Turn("assistant", AGENT_TEXT),
                              Turn("user", "4分"), Turn("assistant", settings.csat_thanks_reply)]
    finally:
        with contextlib.suppress(Exception):
            events.close()

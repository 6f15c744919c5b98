"""WebSocket abuse and outages: sockets survive a database outage, a visitor's sockets are capped and cheap when
idle, and a burst's replies reach the socket in conversation order.

Promises checked:
- database black-holed: open sockets stay open and get ``status: degraded`` (then ``ok``), a new socket is accepted
  and told, a message sent meanwhile gets an ``unavailable`` error frame, not a dropped socket.
- one visitor opening more than ``KEFU_WEB_MAX_SOCKETS_PER_VISITOR`` sockets: the oldest are closed with 4008.
- idle sockets cost no database statements of their own (one shared poll per gateway process).
- a burst of 30 messages: every reply arrives once, first occurrences in the order the messages were sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, update
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from channels.web_sockets import RESEND_INTERVAL_S
from models.envelope import ConversationKey
from models.infra.bus import make_bus
from models.infra.db import transaction
from models.replies import Answer, store_reply
from models.states import DeliveryStatus, ReplySource
from models.tables import DeliveryRecord, InboundRecord, ReplyRecord
from tests.chaos.conftest import Proxied
from tests.integration.conftest import Stack, recv_until, start_stack

CAP = 5  # KEFU_WEB_MAX_SOCKETS_PER_VISITOR's default


def _is(kind: str, **fields: Any) -> Any:
    return lambda f: f["type"] == kind and all(f.get(k) == v for k, v in fields.items())


def _alive(ws: ClientConnection) -> None:
    ws.send(json.dumps({"type": "ping"}))
    recv_until(ws, _is("pong"), timeout=30)


def test_a_database_outage_keeps_sockets_open_and_degraded(black_holed_db: Proxied) -> None:
    stack, proxy = black_holed_db.stack, black_holed_db.proxy
    _, token = stack.visitor()
    with stack.ws(token) as old:
        _alive(old)
        proxy.blackhole()
        recv_until(old, _is("status", state="degraded"), timeout=30)  # it was dropped within ~3 s before
        with stack.ws(token) as new:  # accepted, and told at once
            recv_until(new, _is("status", state="degraded"), timeout=30)
            new.send(json.dumps({"type": "message", "text": "还在吗？", "client_msg_id": "during"}))
            error = recv_until(new, _is("error"), timeout=30)[-1]
            assert error["code"] == "unavailable" and "send it again" in error["message"]
            _alive(new)
            _alive(old)

            proxy.passthrough()
            recv_until(old, _is("status", state="ok"), timeout=30)
            recv_until(new, _is("status", state="ok"), timeout=30)
            new.send(json.dumps({"type": "message", "text": "还在吗？", "client_msg_id": "during"}))
            accepted = recv_until(new, _is("accepted"), timeout=30)[-1]
            recv_until(new, _is("reply", message_id=accepted["message_id"]), timeout=120)


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, pg_url: str, redis_url: str
              ) -> Iterator[Stack]:
    stack = start_stack("redis-postgres", tmp_path_factory.mktemp("web-stack"), tiny_gguf, pg_url, redis_url)
    try:
        yield stack
    finally:
        stack.close()


def test_a_visitor_over_the_socket_cap_loses_the_oldest_sockets(web_stack: Stack) -> None:
    _, token = web_stack.visitor()
    with ExitStack() as sockets:
        opened = [sockets.enter_context(web_stack.ws(token)) for _ in range(CAP + 2)]
        for ws in opened[:2]:
            with pytest.raises(ConnectionClosed) as closed:
                recv_until(ws, lambda f: False, timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
            assert "too many open chats" in closed.value.rcvd.reason
        for ws in opened[2:]:
            _alive(ws)


class _Statements:
    """Counts SQL statements run by every engine in this process (the gateway runs in a thread here), except the
    gateway's knowledge-base revision check (models.knowledge.faq_sync), which runs on its own clock whatever the
    number of sockets."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "kb_state" in statement:
            return
        with self._lock:
            self.count += 1


def test_idle_sockets_cost_no_database_statements_of_their_own(web_stack: Stack) -> None:
    visitors = [web_stack.visitor()[1] for _ in range(4)]
    counter = _Statements()
    with ExitStack() as sockets:
        opened = [sockets.enter_context(web_stack.ws(token)) for token in visitors for _ in range(CAP)]
        for ws in opened:
            _alive(ws)
        event.listen(Engine, "before_cursor_execute", counter)
        try:
            window = 3 * RESEND_INTERVAL_S
            time.sleep(window)  # a window to count in, not a wait for something to happen
        finally:
            event.remove(Engine, "before_cursor_execute", counter)
        for ws in opened:
            _alive(ws)
    polls = int(window / RESEND_INTERVAL_S) + 1
    print(f"{len(opened)} idle sockets: {counter.count} statements in {window:.0f} s")
    assert counter.count <= polls  # one shared poll per interval; it was two per socket per interval


def test_a_burst_of_30_reply_frames_arrives_in_conversation_order(web_stack: Stack) -> None:
    _, token = web_stack.visitor()
    with web_stack.ws(token) as ws:
        for n in range(30):  # all at once, without waiting for answers
            ws.send(json.dumps({"type": "message", "text": f"第{n}个问题", "client_msg_id": f"burst-{n}"}))
        message_ids: list[int] = []
        shown: list[int] = []  # message ids in the order their first reply frame arrived
        while len(shown) < 30:
            frame = recv_until(ws, lambda f: f["type"] in ("accepted", "reply"), timeout=180)[-1]
            if frame["type"] == "accepted":
                message_ids.append(frame["message_id"])
            elif frame["message_id"] not in shown:
                shown.append(frame["message_id"])
                ws.send(json.dumps({"type": "ack", "reply_id": frame["reply_id"]}))
    assert shown == sorted(shown) == sorted(message_ids)
    with web_stack.sessions() as s:
        counts = s.execute(select(ReplyRecord.inbound_id, func.count()).where(ReplyRecord.inbound_id.in_(shown))
                           .group_by(ReplyRecord.inbound_id)).all()
    assert sorted(c for _, c in counts) == [1] * 30


def test_live_replies_arriving_in_reverse_reach_the_socket_in_conversation_order(
        tmp_path: Path, tiny_gguf: Path, pg_url: str, redis_url: str) -> None:
    """Two io workers race: the live events of a conversation's replies arrive last first. Another tab of the same
    visitor confirmed each reply already, so the database resend does not cover them: only the order the gateway
    imposes on live replies does."""
    stack = start_stack("redis-postgres", tmp_path, tiny_gguf, pg_url, redis_url)
    stack.worker.stop()  # the test stores the replies itself, as the worker would
    bus = make_bus(stack.settings)
    try:
        visitor_id, token = stack.visitor()
        key = ConversationKey("web", stack.settings.web_account, visitor_id)
        with stack.ws(token) as ws, stack.http() as http:
            ids = [http.post("/v1/web/messages", headers={"Authorization": f"Bearer {token}"},
                             json={"visitor_id": visitor_id, "text": f"第{n}个问题", "client_msg_id": f"r{n}"}
                             ).json()["message_id"] for n in range(10)]
            events = []
            for n, inbound_id in enumerate(ids):  # answered in order, each confirmed at once by the other tab
                with transaction(stack.sessions) as s:
                    conversation_id = s.get(InboundRecord, inbound_id).conversation_id  # type: ignore[union-attr]
                    reply_id = store_reply(s, inbound_id=inbound_id, conversation_id=conversation_id, channel="web",
                                           answer=Answer(f"第{n}个回答", ReplySource.MODEL))
                    s.execute(update(DeliveryRecord).where(DeliveryRecord.reply_id == reply_id)
                              .values(status=DeliveryStatus.DELIVERED))
                events.append({"type": "reply", "reply_id": reply_id, "message_id": inbound_id, "text": f"第{n}个回答"})
            for ev in reversed(events):
                bus.publish(key.topic(), ev)
            shown: list[int] = []
            while len(shown) < len(ids):
                frame = recv_until(ws, _is("reply"), timeout=30)[-1]
                if frame["message_id"] not in shown:
                    shown.append(frame["message_id"])
        assert shown == ids
    finally:
        stack.close()

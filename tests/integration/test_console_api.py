"""The agent console's API over HTTP (httpx against a real gateway under uvicorn), on SQLite with the embedded KV
and on PostgreSQL with Redis: accounts made by ``kefu user``'s code path, login with login CSRF, sessions stored
as hashes that logout deletes and expiry ends, the CSRF header on every state-changing request, the login rate
limit counted in the shared KV store (a second gateway process refuses too), the admin role, the inbox's filters
and keyset pages, the live event stream, and claim / reply / hand-back between two agents (409 for the one who
does not hold the conversation)."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from channels.console import events
from channels.console.throttle import LoginThrottle
from channels.ingress import Accepted, Ingress
from models import audit, desk, notes
from models.envelope import ConversationKey, Inbound, utcnow
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.kv import make_kv
from models.infra.migrate import upgrade
from models.settings import Settings
from models.states import Handler, ReplySource
from models.tables import (
    AgentRecord,
    AgentSessionRecord,
    AuditEvent,
    DeliveryRecord,
    KbDocumentRecord,
    KbFaqRecord,
    KbPassageRecord,
    ReplyRecord,
)
from tests import services
from workers import user_command
from workers.demo.processes import GatewayThread

PASSWORD = "correct horse battery"
USERNAMES = ("alice", "bob", "root", "carol", "dave", "erin")
ATTEMPTS = 3


class Published:
    """The gateway's publisher stand-in for conversations this test makes in-process (nobody consumes them)."""

    def handle_inbound(self, inbound_id: int) -> None:
        pass

    def deliver(self, reply_id: int) -> None:
        pass


@dataclass
class Console:
    settings: Settings
    sessions: sessionmaker[Session]
    gateway: GatewayThread
    ingress: Ingress
    clients: list[httpx.Client]

    def client(self, gateway: GatewayThread | None = None) -> httpx.Client:
        """A browser-like client (its cookies); closed after the test."""
        http = httpx.Client(base_url=(gateway or self.gateway).http_url, timeout=10)
        self.clients.append(http)
        return http

    def conversation(self, peer: str, text: str = "你好") -> Accepted:
        key = ConversationKey("web", "default", peer)
        return self.ingress.accept(Inbound(key, f"{peer}-{utcnow().timestamp()}", text))


@pytest.fixture(scope="module", params=["sqlite", "postgresql-redis"])
def console(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data_dir = tmp_path_factory.mktemp(f"console-{request.param}")
    values: dict[str, Any] = {"data_dir": data_dir, "console_login_attempts": ATTEMPTS, "intent_model": "off",
                              "secret_key": "test-secret"}
    name = None
    if request.param == "postgresql-redis":
        services.ensure_postgres()
        services.ensure_redis()
        name, url = services.create_database()
        values |= {"database_url": url, "broker_url": services.redis_db_url(12)}
    settings = Settings(**values)
    upgrade(settings)
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    gateway = GatewayThread(settings).start()
    try:
        add_user(sessions, "alice", "agent", "小爱")
        add_user(sessions, "bob", "agent", "小博")
        add_user(sessions, "root", "admin", "管理员")
        yield Console(settings, sessions, gateway, Ingress(sessions, Published()), [])  # type: ignore[arg-type]
    finally:
        gateway.stop()
        engine.dispose()
        if name is not None:
            services.drop_database(name)


@pytest.fixture(autouse=True)
def fresh_throttle(console: Console) -> Iterator[None]:
    """Every test logs in from 127.0.0.1: failed logins of one test must not lock the address for the next."""
    kv = make_kv(console.settings)
    throttle = LoginThrottle(kv, ATTEMPTS, console.settings.console_login_window_s)
    try:
        for username in USERNAMES:
            for key in throttle.keys(username, "127.0.0.1"):
                throttle.clear(key)
        yield
    finally:
        getattr(kv, "close", lambda: None)()
        while console.clients:
            console.clients.pop().close()


def add_user(sessions: sessionmaker[Session], username: str, role: str, name: str) -> None:
    """What ``kefu user add USERNAME --role ROLE --display-name NAME --password-stdin`` does."""
    assert user_command.add(sessions, username, role, name, lambda: user_command.stdin_password(
        io.StringIO(PASSWORD + "\n")), io.StringIO()) == 0


def login_form(http: httpx.Client) -> str:
    page = http.get("/console/login")
    assert page.status_code == 200 and "kefu_console_login" in http.cookies
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def login(http: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    token = login_form(http)
    return http.post("/console/login", data={"username": username, "password": password, "csrf": token})


def signed_in(console: Console, username: str) -> tuple[httpx.Client, dict[str, Any]]:
    http = console.client()
    answer = login(http, username)
    assert answer.status_code == 303 and answer.headers["location"] == "/console", answer.text
    me = http.get("/console/api/me").json()
    http.headers["X-CSRF-Token"] = me["csrf"]
    return http, me


def audit_kinds(console: Console, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    with console.sessions() as session:
        return [(k, d) for k, d in session.execute(select(AuditEvent.kind, AuditEvent.detail)
                                                   .where(AuditEvent.kind.like(f"{prefix}%")).order_by(AuditEvent.id))]


def test_login_session_and_logout(console: Console) -> None:
    http = console.client()
    assert http.get("/console/api/me").status_code == 401
    assert http.get("/console").status_code == 303  # the page sends you to the login form
    refused = login(http, "alice", "not the password")
    assert refused.status_code == 401 and "用户名或密码错误" in refused.text

    http, me = signed_in(console, "alice")
    assert (me["username"], me["display_name"], me["role"], me["status"]) == ("alice", "小爱", "agent", "online")
    token = http.cookies["kefu_console"]
    cookie = next(c for c in http.cookies.jar if c.name == "kefu_console")
    assert cookie.path == "/console" and cookie.has_nonstandard_attr("HttpOnly")
    with console.sessions() as session:  # only the token's SHA-256 is stored
        stored = session.scalars(select(AgentSessionRecord).where(
            AgentSessionRecord.agent_id == me["id"])).all()
    assert hashlib.sha256(token.encode()).hexdigest() in {s.token_hash for s in stored}
    assert all(token not in (s.token_hash, s.csrf) for s in stored)
    assert http.get("/console").status_code == 200

    assert http.post("/console/api/logout").json() == {"logged_out": True}
    http.cookies.set("kefu_console", token, domain="127.0.0.1", path="/console")  # the old cookie, replayed
    assert http.get("/console/api/me").status_code == 401
    with console.sessions() as session:
        assert session.scalars(select(AgentSessionRecord.id).where(
            AgentSessionRecord.token_hash == hashlib.sha256(token.encode()).hexdigest())).first() is None
    logins = audit_kinds(console, "console_log")
    assert ("console_login_failed", "alice") in {(k, d.get("username")) for k, d in logins}
    assert {"console_login", "console_logout"} <= {k for k, _ in logins}
    assert not any(PASSWORD in json.dumps(d, ensure_ascii=False) or "not the password" in json.dumps(d)
                   for _, d in logins)


def test_an_expired_session_is_refused(console: Console) -> None:
    http, me = signed_in(console, "alice")
    assert http.get("/console/api/conversations").status_code == 200
    with transaction(console.sessions) as session:
        session.execute(update(AgentSessionRecord).where(AgentSessionRecord.agent_id == me["id"])
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
    answer = http.get("/console/api/conversations")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"


def test_state_changing_requests_need_the_csrf_token(console: Console) -> None:
    http, me = signed_in(console, "alice")
    csrf = http.headers.pop("X-CSRF-Token")
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        answer = http.post("/console/api/presence", json={"status": "away"}, headers=headers)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "forbidden"
    assert http.post("/console/api/logout").status_code == 403
    assert http.get("/console/api/me").status_code == 200  # still signed in: the forged logout did nothing
    answer = http.post("/console/api/presence", json={"status": "away"}, headers={"X-CSRF-Token": csrf})
    assert answer.json() == {"status": "away"}
    with console.sessions() as session:
        assert session.scalars(select(AgentRecord.status).where(AgentRecord.id == me["id"])).one() == "away"

    # login CSRF: a form posted without the pre-session cookie's token, or from another origin, is refused
    fresh = console.client()
    token = login_form(fresh)
    forged = fresh.post("/console/login", data={"username": "alice", "password": PASSWORD, "csrf": "x" * 43})
    assert forged.status_code == 403 and "kefu_console" not in fresh.cookies
    elsewhere = fresh.post("/console/login", data={"username": "alice", "password": PASSWORD, "csrf": token},
                           headers={"Origin": "https://evil.example"})
    assert elsewhere.status_code == 403 and "kefu_console" not in fresh.cookies


def test_failed_logins_are_limited_across_gateway_processes(console: Console) -> None:
    kv = make_kv(console.settings)
    try:
        http = console.client()
        for _ in range(ATTEMPTS):
            assert login(http, "bob", "wrong password!").status_code == 401
        user_key, address_key = LoginThrottle(kv, ATTEMPTS, 1).keys("bob", "127.0.0.1")
        assert "bob" not in user_key and "127.0.0.1" not in address_key  # digests, never the name or address
        assert kv.get(f"{user_key}:{ATTEMPTS}") is not None  # counted in the shared store
        other = GatewayThread(console.settings).start()  # a second gateway process behind the same balancer
        try:
            with console.client(other) as elsewhere:
                locked = login(elsewhere, "bob")  # even the right password, from the other gateway
                assert locked.status_code == 429
                assert 0 < int(locked.headers["Retry-After"]) <= console.settings.console_login_window_s
                assert "登录失败次数过多" in locked.text and "kefu_console" not in elsewhere.cookies
        finally:
            other.stop()
        assert ("console_login_failed", "rate_limited") in {(k, d.get("reason")) for k, d in audit_kinds(
            console, "console_login_failed")}
    finally:
        getattr(kv, "close", lambda: None)()


def test_only_admins_manage_accounts(console: Console) -> None:
    agent, _ = signed_in(console, "alice")
    assert agent.get("/console/api/users").status_code == 403
    refused = agent.post("/console/api/users", json={"username": "eve", "password": PASSWORD, "role": "admin"})
    assert refused.status_code == 403
    admin, _ = signed_in(console, "root")
    assert {u["username"] for u in admin.get("/console/api/users").json()["users"]} >= {"alice", "bob", "root"}
    short = admin.post("/console/api/users", json={"username": "carol", "password": "short", "role": "agent"})
    assert short.status_code == 422 and "10" in short.json()["error"]["message"]
    added = admin.post("/console/api/users", json={"username": "carol", "password": PASSWORD, "role": "agent"})
    assert added.status_code == 201
    assert login(console.client(), "carol").status_code == 303
    added_by = [d for k, d in audit_kinds(console, "console_user_added") if d.get("username") == "carol"]
    assert added_by and added_by[0]["by"] == "console:root" and PASSWORD not in json.dumps(added_by)


def test_claim_reply_and_hand_back_between_two_agents(console: Console) -> None:
    alice, alice_me = signed_in(console, "alice")
    bob, _ = signed_in(console, "bob")
    accepted = console.conversation("claim-visitor", "我要退款")
    c = accepted.conversation_id
    with transaction(console.sessions) as session:
        assert desk.queue(session, c, "web", "test")

    with alice.stream("GET", "/console/api/events") as events:  # the live stream sees what happens next
        lines = events.iter_lines()
        assert next(lines).startswith("retry:") and next(lines) == "event: ready"

        claimed = alice.post(f"/console/api/conversations/{c}/claim")
        assert claimed.status_code == 200
        row = claimed.json()["conversation"]
        assert (row["handler"], row["agent_id"], row["agent_name"]) == ("agent", alice_me["id"], "小爱")
        event: dict[str, Any] = {}
        for line in lines:  # the claim's event (a read timeout fails the test if it never comes)
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event.get("type") == "handler" and event["conversation_id"] == c:
                    break
        assert event == {"type": "handler", "conversation_id": c, "handler": "agent", "agent_id": alice_me["id"],
                         "agent_name": "小爱"}

    conflict = bob.post(f"/console/api/conversations/{c}/claim")
    assert conflict.status_code == 409 and conflict.json()["error"]["message"] == "该会话已由客服「小爱」接待，无法接入"
    assert bob.post(f"/console/api/conversations/{c}/reply", json={"text": "我来"}).status_code == 409
    assert alice.post(f"/console/api/conversations/{c}/reply", json={"text": "  "}).status_code == 422
    too_long = "好" * (console.settings.max_text_chars + 1)
    assert alice.post(f"/console/api/conversations/{c}/reply", json={"text": too_long}).status_code == 422
    sent = alice.post(f"/console/api/conversations/{c}/reply", json={"text": "您好，我是小爱"})
    assert sent.status_code == 201
    with console.sessions() as session:
        reply = session.get(ReplyRecord, sent.json()["reply_id"])
        assert reply is not None and (reply.source, reply.agent_id, reply.text) == (
            ReplySource.AGENT, alice_me["id"], "您好，我是小爱")

    view = alice.get(f"/console/api/conversations/{c}").json()
    assert [(m["who"], m["text"]) for m in view["messages"]] == [("customer", "我要退款"), ("agent", "您好，我是小爱")]
    assert view["messages"][1]["agent_name"] == "小爱" and view["messages"][1]["delivery"] == "pending"
    assert {"desk_queued", "desk_claimed", "reply_stored"} <= {e["kind"] for e in view["timeline"]}

    assert bob.post(f"/console/api/conversations/{c}/hand-back").status_code == 409
    back = alice.post(f"/console/api/conversations/{c}/hand-back")
    assert back.status_code == 200 and back.json()["conversation"]["handler"] == Handler.BOT
    with console.sessions() as session:  # the customer is asked for a score, to be delivered like any reply
        asked = session.execute(select(ReplyRecord.text, DeliveryRecord.status)
                                .join(DeliveryRecord, DeliveryRecord.reply_id == ReplyRecord.id)
                                .where(ReplyRecord.conversation_id == c, ReplyRecord.source == ReplySource.CSAT)).all()
    assert [tuple(row) for row in asked] == [(console.settings.csat_request_reply, "pending")]
    assert alice.post(f"/console/api/conversations/{c}/claim", headers={"X-CSRF-Token": ""}).status_code == 403


def test_inbox_filters_and_pages(console: Console) -> None:
    alice, alice_me = signed_in(console, "alice")
    made = [console.conversation(f"page-visitor-{i}", f"第 {i} 个问题") for i in range(7)]
    ids = [a.conversation_id for a in made]
    with transaction(console.sessions) as session:
        desk.queue(session, ids[1], "web", "test")
        desk.claim(session, ids[2], alice_me["id"])
        reply_id = desk.store_agent_reply(session, ids[2], alice_me["id"], "已回复")
    assert reply_id > 0

    seen: list[int] = []
    cursor = None
    while True:
        page = alice.get("/console/api/conversations", params={"limit": 3, **({"before": cursor} if cursor else {})})
        body = page.json()
        assert len(body["conversations"]) <= 3
        seen += [r["id"] for r in body["conversations"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))  # no conversation twice across pages
    assert [i for i in seen if i in ids] == ids[::-1]  # newest customer message first

    first = alice.get("/console/api/conversations").json()
    newest = first["conversations"][0]
    assert newest["id"] == ids[-1] and newest["preview"] == "第 6 个问题" and newest["unanswered"] is True
    assert newest["peer"] != "page-visitor-6" and newest["channel"] == "web"
    assert first["waiting"] >= 1
    waiting = alice.get("/console/api/conversations", params={"handler": "waiting"}).json()["conversations"]
    assert ids[1] in {r["id"] for r in waiting} and all(r["handler"] == "waiting" for r in waiting)
    assert all(r["waiting_since"] for r in waiting)
    mine = alice.get("/console/api/conversations", params={"mine": "1"}).json()["conversations"]
    assert [r["id"] for r in mine] == [ids[2]] and mine[0]["agent_name"] == "小爱"
    unanswered = {r["id"] for r in alice.get("/console/api/conversations", params={"unanswered": "1"}).json()[
        "conversations"]}
    assert ids[2] not in unanswered and ids[3] in unanswered
    assert alice.get("/console/api/conversations", params={"channel": "wecom"}).json()["conversations"] == []
    with transaction(console.sessions) as session:
        notes.tag(session, ids[4], "VIP", alice_me["id"], "alice")
    tagged = alice.get("/console/api/conversations", params={"tag": "VIP"}).json()["conversations"]
    assert [r["id"] for r in tagged] == [ids[4]]
    assert alice.get("/console/api/conversations", params={"tag": "无此标签"}).json()["conversations"] == []
    page = alice.get("/console")
    assert '<option value="return_refund">' in page.text and '<option value="phone">' in page.text
    assert alice.get("/console/api/conversations", params={"handler": "nobody"}).status_code == 422
    assert alice.get("/console/api/conversations", params={"before": "garbage"}).status_code == 422
    summary = alice.get(f"/console/api/conversations/{ids[2]}/summary").json()["conversation"]
    assert summary["handler"] == "agent" and summary["unanswered"] is False
    assert alice.get("/console/api/conversations/999999999/summary").status_code == 404


def test_user_command_refuses_short_passwords_and_disables(console: Console, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    settings = console.settings
    old_stdin = sys.stdin
    try:
        sys.stdin = io.StringIO("too short\n")
        assert user_command.run(settings, "add", "dave", "agent", None, password_stdin=True) == 1
        assert "at least 10 characters" in capsys.readouterr().err
        sys.stdin = io.StringIO(PASSWORD + "\n")
        assert user_command.run(settings, "add", "dave", "agent", "小戴", password_stdin=True) == 0
        sys.stdin = io.StringIO(PASSWORD + "\n")
        assert user_command.run(settings, "add", "dave", "agent", None, password_stdin=True) == 1
        assert "taken" in capsys.readouterr().err
        http, _ = signed_in(console, "dave")
        sys.stdin = io.StringIO("a brand new password\n")
        assert user_command.run(settings, "passwd", "dave", password_stdin=True) == 0
        assert http.get("/console/api/me").status_code == 401  # a new password ends the sessions
        assert login(console.client(), "dave").status_code == 401
        assert login(console.client(), "dave", "a brand new password").status_code == 303
        assert user_command.run(settings, "disable", "dave") == 0
        assert login(console.client(), "dave", "a brand new password").status_code == 401
        assert user_command.run(settings, "list") == 0
        listing = capsys.readouterr().out
        assert re.search(r"dave\s+agent\s+disabled", listing) and PASSWORD not in listing
        with console.sessions() as session:
            stored = session.scalars(select(AgentRecord.password_hash).where(AgentRecord.username == "dave")).one()
        assert stored.startswith("$argon2id$")
    finally:
        sys.stdin = old_stdin


def test_the_event_stream_beats_presence_and_ends_with_the_session(console: Console,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "KEEPALIVE_S", 0.2)  # the gateway runs in this process: its stream reads this
    alice, me = signed_in(console, "alice")
    with transaction(console.sessions) as session:  # long ago, so a beat shows
        session.execute(update(AgentRecord).where(AgentRecord.id == me["id"]).values(seen_at=utcnow() - timedelta(
            hours=1)))
    with console.client() as watcher:
        watcher.cookies.set("kefu_console", alice.cookies["kefu_console"], domain="127.0.0.1", path="/console")
        with watcher.stream("GET", "/console/api/events") as stream:
            lines = stream.iter_lines()
            assert [next(lines), next(lines)] == ["retry: 2000", "event: ready"]
            assert next(lines) == "data: {}" and next(lines) == ""
            assert next(lines) == ": keepalive"
            with console.sessions() as session:
                seen = session.scalars(select(AgentRecord.seen_at).where(AgentRecord.id == me["id"])).one()
            assert seen is not None and utcnow() - seen < timedelta(minutes=1)
            assert alice.post("/console/api/logout").status_code == 200
            rest = list(lines)  # the stream ends by itself once a beat finds the session gone
            assert "event: expired" in rest


def test_the_conversation_view_names_the_knowledge_a_reply_used(console: Console) -> None:
    alice, _ = signed_in(console, "alice")
    accepted = console.conversation("kb-visitor", "退货政策是什么？")
    with transaction(console.sessions) as session:
        document = KbDocumentRecord(source="policy.md", title="退换货政策", kind="markdown", content_hash="0" * 64)
        session.add(document)
        session.flush()
        passage = KbPassageRecord(document_id=document.id, ordinal=0, heading="退货", text="七天无理由退货。")
        faq = KbFaqRecord(document_id=document.id, ordinal=0, question="能退货吗", similar=[], answer="可以。")
        session.add_all([passage, faq])
        reply = ReplyRecord(inbound_id=accepted.inbound_id, conversation_id=accepted.conversation_id,
                            text="支持七天无理由退货。", source=ReplySource.MODEL, model="tiny", created_at=utcnow())
        session.add(reply)
        session.flush()
        audit.record(session, audit.KB_USED, channel="web", conversation_id=accepted.conversation_id,
                     inbound_id=accepted.inbound_id, reply_id=reply.id, kb_revision=1,
                     passages=[passage.id, 987654321], faq=[faq.id], dense=False)
        ids = (passage.id, faq.id, document.id, reply.id)

    view = alice.get(f"/console/api/conversations/{accepted.conversation_id}").json()
    customer, bot = view["messages"]
    assert (customer["who"], customer["text"]) == ("customer", "退货政策是什么？")
    assert (bot["who"], bot["source"], bot["id"]) == ("bot", "model", ids[3])
    assert bot["sources"] == [
        {"kind": "passage", "id": ids[0], "document_id": ids[2], "title": "退换货政策"},
        {"kind": "passage", "id": 987654321, "document_id": None, "title": None},  # deleted since: its id only
        {"kind": "faq", "id": ids[1], "document_id": ids[2], "title": "退换货政策"},
    ]
    assert [e["kind"] for e in view["timeline"]][-1] == "kb_used"
    assert view["conversation"]["id"] == accepted.conversation_id


def test_a_gateway_with_an_open_event_stream_still_stops(console: Console) -> None:
    other = GatewayThread(console.settings).start()
    try:
        http = console.client(other)
        assert login(http, "alice").status_code == 303
        with http.stream("GET", "/console/api/events") as stream:
            lines = stream.iter_lines()
            assert [next(lines), next(lines)] == ["retry: 2000", "event: ready"]
            other.stop()  # uvicorn cancels the stream after GRACEFUL_SHUTDOWN_S instead of waiting for the browser
            assert not other.thread.is_alive()
    finally:
        other.stop()


def test_no_login_without_the_rate_limit_store(console: Console) -> None:
    """A KV store that does not answer (Redis down) refuses logins in Chinese rather than skipping the limit."""
    if console.settings.database_url is None:
        pytest.skip("the embedded KV store is a local file: it has no outage to simulate")
    dead = console.settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0", "publish_timeout_s": 0.5})
    other = GatewayThread(dead).start()
    try:
        refused = login(console.client(other), "alice")
        assert refused.status_code == 503 and "登录服务暂时不可用" in refused.text
    finally:
        other.stop()


def test_a_hash_with_old_parameters_is_replaced_at_login(console: Console) -> None:
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    with transaction(console.sessions) as session:
        session.add(AgentRecord(username="erin", display_name="小艾", role="agent", password_hash=weak))
    assert login(console.client(), "erin").status_code == 303
    with console.sessions() as session:
        stored = session.scalars(select(AgentRecord.password_hash).where(AgentRecord.username == "erin")).one()
    assert stored != weak and stored.startswith("$argon2id$")
    assert not PasswordHasher().check_needs_rehash(stored) and PasswordHasher().verify(stored, PASSWORD)

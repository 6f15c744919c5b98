"""The console extras' API over HTTP (httpx against a real gateway under uvicorn), on SQLite with the embedded KV and
on PostgreSQL with Redis: canned replies (admins write, agents read), notes and tags (any agent; a live event on
the desk topic), the satisfaction report and the knowledge base (admins only; the store's audit rows carry the
admin's username), "make this answer an FAQ", and the CSRF header on every state-changing route. The customer's
side on a whole stack: test_console_extras_stack.py."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from channels.ingress import Ingress
from models.envelope import ConversationKey, Inbound, utcnow
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.knowledge import faq_cache
from models.settings import Settings
from models.tables import AuditEvent, CsatRecord, InboundRecord, ReplyRecord
from tests import services
from workers import user_command
from workers.demo.processes import GatewayThread

PASSWORD = "correct horse battery"
FAQ_CSV = "问题,相似问,答案\n多久发货,什么时候发货|几天发货,付款后 48 小时内发货。\n支持哪些快递,,默认顺丰。\n"


class Published:
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

    def conversation(self, peer: str, text: str = "你好") -> int:
        key = ConversationKey("web", "default", peer)
        accepted = self.ingress.accept(Inbound(key, f"{peer}-{utcnow().timestamp()}", text))
        with self.sessions() as session:
            inbound = session.get(InboundRecord, accepted.inbound_id)
            assert inbound is not None
            return int(inbound.conversation_id)

    def client(self) -> httpx.Client:
        http = httpx.Client(base_url=self.gateway.http_url, timeout=30)
        self.clients.append(http)
        return http


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


@pytest.fixture(scope="module", params=["sqlite", "postgresql-redis"])
def console(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    data_dir = tmp_path_factory.mktemp(f"console-extras-{request.param}")
    values: dict[str, Any] = {"data_dir": data_dir, "intent_model": "off", "secret_key": "test-secret"}
    name = None
    if request.param == "postgresql-redis":
        services.ensure_postgres()
        services.ensure_redis()
        name, url = services.create_database()
        values |= {"database_url": url, "broker_url": services.redis_db_url(11)}
    settings = Settings(**values)
    upgrade(settings)
    engine = make_engine(settings)
    sessions = make_session_factory(engine)
    gateway = GatewayThread(settings).start()
    console = Console(settings, sessions, gateway, Ingress(sessions, Published()), [])  # type: ignore[arg-type]
    try:
        add_user(sessions, "amy", "agent", "小艾")
        add_user(sessions, "boss", "admin", "主管")
        yield console
    finally:
        for http in console.clients:
            http.close()
        gateway.stop()
        engine.dispose()
        faq_cache.install([])
        if name is not None:
            services.drop_database(name)


@pytest.fixture
def agent(console: Console) -> httpx.Client:
    http = console.client()
    signed_in(http, "amy")
    return http


@pytest.fixture
def admin(console: Console) -> httpx.Client:
    http = console.client()
    signed_in(http, "boss")
    return http


def audited(console: Console, kind: str) -> list[dict[str, Any]]:
    with console.sessions() as session:
        return list(session.scalars(select(AuditEvent.detail).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))


def test_canned_replies_admins_write_agents_read(console: Console, agent: httpx.Client, admin: httpx.Client) -> None:
    assert console.client().get("/console/api/canned").status_code == 401
    refused = agent.put("/console/api/canned/refund", json={"text": "退款 3 个工作日内到账。"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    created = admin.put("/console/api/canned/refund", json={"text": "退款 3 个工作日内到账。"})
    assert created.status_code == 201, created.text
    assert admin.put("/console/api/canned/refund", json={"text": "退款 1-3 个工作日内到账。"}).status_code == 200
    assert admin.put("/console/api/canned/退款", json={"text": "中文快捷词"}).status_code == 201
    bad = admin.put("/console/api/canned/Bad%20Name", json={"text": "x"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (422, "invalid_canned")
    assert admin.put("/console/api/canned/long", json={"text": "字" * 2001}).status_code == 422
    listed = agent.get("/console/api/canned").json()["canned"]
    assert [(c["shortcut"], c["text"]) for c in listed] == [("refund", "退款 1-3 个工作日内到账。"), ("退款", "中文快捷词")]
    assert agent.delete("/console/api/canned/refund").status_code == 403
    assert admin.delete("/console/api/canned/refund").json() == {"deleted": "refund"}
    assert admin.delete("/console/api/canned/refund").status_code == 404
    saved = audited(console, "console_canned_saved")
    assert [(d["shortcut"], d["by"]) for d in saved] == [("refund", "boss"), ("refund", "boss"), ("退款", "boss")]
    assert "1-3" not in json.dumps(saved, ensure_ascii=False)  # never the text


def test_notes_and_tags(console: Console, agent: httpx.Client, admin: httpx.Client) -> None:
    first, second = console.conversation("notes-1", "我要退款"), console.conversation("notes-2")
    base = f"/console/api/conversations/{first}"
    added = agent.post(f"{base}/notes", json={"text": "客户很着急，优先处理"})
    assert added.status_code == 201, added.text
    assert added.json()["note"]["agent_name"] == "小艾"
    assert agent.post(f"{base}/notes", json={"text": "  "}).status_code == 422
    assert agent.post("/console/api/conversations/999999/notes", json={"text": "x"}).status_code == 404
    assert [n["text"] for n in admin.get(f"{base}/notes").json()["notes"]] == ["客户很着急，优先处理"]

    assert agent.put(f"{base}/tags/退款").json() == {"tags": ["退款"], "changed": True}
    assert agent.put(f"{base}/tags/退款").json() == {"tags": ["退款"], "changed": False}
    assert agent.put(f"{base}/tags/VIP").json()["tags"] == ["退款", "VIP"]
    assert admin.put(f"/console/api/conversations/{second}/tags/VIP").status_code == 200
    assert agent.put(f"{base}/tags/a%20b").status_code == 422
    counts = agent.get("/console/api/tags").json()["tags"]
    assert {c["tag"]: c["count"] for c in counts}.items() >= {"VIP": 2, "退款": 1}.items()
    assert agent.delete(f"{base}/tags/退款").json() == {"tags": ["VIP"], "changed": True}
    assert agent.get(f"{base}/tags").json() == {"tags": ["VIP"]}
    with console.sessions() as session:  # a note is no reply: nothing to deliver to the customer
        assert session.scalars(select(ReplyRecord.id).where(ReplyRecord.conversation_id == first)).first() is None
    [note_row] = [d for d in audited(console, "console_note_added") if d["by"] == "amy"][-1:]
    assert "着急" not in json.dumps(note_row, ensure_ascii=False)


def audit_count(console: Console) -> int:
    with console.sessions() as session:
        return len(session.scalars(select(AuditEvent.id)).all())


def test_every_state_changing_route_needs_the_csrf_token(console: Console, admin: httpx.Client) -> None:
    conversation_id = console.conversation("csrf-1")
    csrf = admin.headers.pop("X-CSRF-Token")
    before = audit_count(console)
    calls = [("PUT", "/console/api/canned/x", {"text": "x"}), ("DELETE", "/console/api/canned/x", None),
             ("POST", f"/console/api/conversations/{conversation_id}/notes", {"text": "x"}),
             ("PUT", f"/console/api/conversations/{conversation_id}/tags/x", None),
             ("DELETE", f"/console/api/conversations/{conversation_id}/tags/x", None),
             ("POST", "/console/api/kb/faq", {"question": "q", "answer": "a"}),
             ("PUT", "/console/api/kb/faq/1", {"question": "q", "answer": "a"}),
             ("DELETE", "/console/api/kb/documents/1", None),
             ("POST", "/console/api/kb/documents", {"source": "a.md", "kind": "markdown", "content": "# a"}),
             ("POST", "/console/api/answers", {"reply_id": 1})]
    for method, path, body in calls:
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            answer = admin.request(method, path, json=body, headers=headers)
            assert answer.status_code == 403, (method, path, answer.text)
    admin.headers["X-CSRF-Token"] = csrf
    assert audit_count(console) == before  # nothing was changed
    assert admin.get(f"/console/api/conversations/{conversation_id}/notes").json() == {"notes": []}
    assert admin.get(f"/console/api/conversations/{conversation_id}/tags").json() == {"tags": []}


def test_the_satisfaction_report_is_for_admins(console: Console, agent: httpx.Client, admin: httpx.Client) -> None:
    conversation_id = console.conversation("csat-1")
    me = agent.get("/console/api/me").json()
    with transaction(console.sessions) as session:
        session.add_all([CsatRecord(conversation_id=conversation_id, round=0, agent_id=None, channel="web", score=4),
                         CsatRecord(conversation_id=conversation_id, round=1, agent_id=me["id"], channel="web",
                                    score=5)])
    assert agent.get("/console/api/csat").status_code == 403
    assert admin.get("/console/api/csat?days=0").status_code == 422
    report = admin.get("/console/api/csat?days=30").json()
    lines = {line["name"]: line for line in report["lines"]}
    assert (lines["机器人"]["count"], lines["机器人"]["distribution"]["4"]) == (1, 1)
    assert (lines["小艾"]["count"], lines["小艾"]["average"], lines["小艾"]["agent_id"]) == (1, 5.0, me["id"])
    assert report["total"]["count"] == 2
    page = admin.get("/console/reports")
    assert page.status_code == 200 and "满意度报表" in page.text
    assert agent.get("/console/reports").status_code == 403
    assert console.client().get("/console/reports").status_code == 303


def test_knowledge_base_editing_by_admins(console: Console, agent: httpx.Client, admin: httpx.Client) -> None:
    assert agent.get("/console/api/kb/documents").status_code == 403
    assert agent.get("/console/kb").status_code == 403
    imported = admin.post("/console/api/kb/documents", content=FAQ_CSV.encode(),
                          params={"source": "faq/shipping.csv"}, headers={"Content-Type": "text/csv"})
    assert imported.status_code == 201, imported.text
    document_id = imported.json()["document"]["id"]
    listed = admin.get("/console/api/kb/documents").json()["documents"]
    assert any(d["id"] == document_id and d["faq"] == 2 for d in listed)
    shown = admin.get(f"/console/api/kb/documents/{document_id}").json()
    first = shown["faq"][0]
    assert (first["question"], first["similar"]) == ("多久发货", ["什么时候发货", "几天发货"])

    edit = {"question": "下单后多久发货", "similar": ["几天发货"], "answer": "付款后 24 小时内发货。"}
    assert agent.put(f"/console/api/kb/faq/{first['id']}", json=edit).status_code == 403
    edited = admin.put(f"/console/api/kb/faq/{first['id']}", json=edit)
    assert edited.status_code == 200 and edited.json()["status"] == "updated", edited.text
    assert admin.put(f"/console/api/kb/faq/{first['id']}", json=edit).json()["status"] == "unchanged"
    assert admin.put("/console/api/kb/faq/999999", json=edit).status_code == 404
    assert admin.put(f"/console/api/kb/faq/{first['id']}", json={**edit, "answer": ""}).status_code == 422
    assert admin.put(f"/console/api/kb/faq/{first['id']}", json={**edit, "similar": "x"}).status_code == 422
    added = admin.post("/console/api/kb/faq", json={"document_id": document_id, "question": "能开发票吗",
                                                    "similar": [], "answer": "可以。"})
    manual = admin.post("/console/api/kb/faq", json={"question": "营业时间", "answer": "每天 9:00-21:00。"})
    assert (added.status_code, manual.status_code) == (201, 201), (added.text, manual.text)
    assert manual.json()["faq"]["document_id"] != document_id
    after = admin.get(f"/console/api/kb/documents/{document_id}").json()
    assert [f["question"] for f in after["faq"]] == ["下单后多久发货", "支持哪些快递", "能开发票吗"]
    assert after["document"]["version"] == 3

    removed = admin.delete(f"/console/api/kb/documents/{manual.json()['faq']['document_id']}")
    assert removed.status_code == 200 and removed.json()["revoked"] is None
    assert [d["by"] for d in audited(console, "kb_faq_edited")] == ["boss"]
    assert [d["by"] for d in audited(console, "kb_faq_added")] == ["boss", "boss"]
    assert audited(console, "kb_imported")[-1]["by"] == "boss"
    assert audited(console, "kb_deleted")[-1]["by"] == "boss"
    page = admin.get("/console/kb")
    assert page.status_code == 200 and "知识库" in page.text
    assert admin.delete(f"/console/api/kb/documents/{document_id}").status_code == 200


def test_make_an_agents_reply_an_faq(console: Console, agent: httpx.Client, admin: httpx.Client) -> None:
    conversation_id = console.conversation("faq-1", "积分可以抵扣运费吗")
    assert agent.post(f"/console/api/conversations/{conversation_id}/claim").status_code == 200
    sent = agent.post(f"/console/api/conversations/{conversation_id}/reply", json={"text": "可以，100 积分抵 1 元。"})
    assert sent.status_code == 201, sent.text
    reply_id = sent.json()["reply_id"]
    assert agent.get(f"/console/api/replies/{reply_id}/faq-draft").status_code == 403
    draft = admin.get(f"/console/api/replies/{reply_id}/faq-draft").json()
    assert draft == {"reply_id": reply_id, "source": "agent", "question": "积分可以抵扣运费吗",
                     "answer": "可以，100 积分抵 1 元。"}
    body = {"reply_id": reply_id, "question": draft["question"], "answer": "可以：100 积分抵 1 元，可抵全部运费。"}
    assert agent.post("/console/api/answers", json=body).status_code == 403
    made = admin.post("/console/api/answers", json=body)
    assert made.status_code == 201, made.text
    assert made.json()["answer"]["answer"] == "可以：100 积分抵 1 元，可抵全部运费。"
    assert admin.post("/console/api/answers", json=body).json()["status"] == "unchanged"
    assert agent.get("/console/api/answers").status_code == 403
    assert reply_id in [a["reply_id"] for a in admin.get("/console/api/answers").json()["answers"]]
    pii = admin.post("/console/api/answers", json={**body, "answer": "请打 13812345678"})
    assert (pii.status_code, pii.json()["error"]["code"]) == (422, "not_approvable")
    assert audited(console, "answer_approved")[-1]["by"] == "boss"

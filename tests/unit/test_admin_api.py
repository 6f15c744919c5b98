"""The admin API (channels/admin.py) on the embedded (SQLite) database: the token, knowledge-base documents in and
out (JSON body and uploaded bytes, through the readers ``kefu kb import`` uses), approved answers, the errors a
console gets, and the audit rows it leaves. The documents are hand-written. The whole gateway with PostgreSQL and
a model: tests/integration/test_approved_answers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from models.infra.db import make_session_factory, transaction
from models.settings import ConfigError, Settings, load_settings
from models.states import ReplySource
from models.tables import AuditEvent, ConversationRecord, InboundRecord, ReplyRecord
from workers.demo.processes import GatewayThread

TOKEN = "test-admin-token-0123456789"
POLICY = "# 退货政策\n\n## 退货\n\n签收后七天内可以无理由退货。\n"
SHEET = "问题,相似问,答案\n几点发货,什么时候发货,付款后 24 小时内发货。\n"


@pytest.fixture
def client(db: Engine, clean_env: Path) -> Iterator[httpx.Client]:
    """The gateway on the embedded database, with the admin API on, and a client that sends its token."""
    gateway = GatewayThread(Settings(data_dir=clean_env / "var", admin_token=TOKEN, admin_max_upload_bytes=4096))
    gateway.start()
    try:
        with httpx.Client(base_url=gateway.http_url, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=10) as http:
            yield http
    finally:
        gateway.stop()


def audit(db: Engine) -> list[tuple[str, dict[str, object]]]:
    with make_session_factory(db)() as session:
        return [(e.kind, e.detail) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


def test_without_the_token_nothing_is_served(client: httpx.Client, db: Engine) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": f"Basic {TOKEN}"}):
        response = client.get("/v1/admin/kb/revision", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "KEFU_ADMIN_TOKEN" in response.json()["error"]["message"]
    response = client.post("/v1/admin/kb/documents", headers={"Authorization": "Bearer nope"},
                           json={"source": "a.md", "kind": "markdown", "content": POLICY})
    assert response.status_code == 401 and audit(db) == []


def test_the_gateway_serves_the_admin_api_only_with_a_token(db: Engine, clean_env: Path) -> None:
    gateway = GatewayThread(Settings(data_dir=clean_env / "var")).start()
    try:
        off = httpx.get(f"{gateway.http_url}/v1/admin/kb/revision", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        gateway.stop()
    assert (off.status_code, off.json()["error"]["code"]) == (404, "not_found")


def test_a_short_token_is_a_config_error_naming_the_variable(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEFU_ADMIN_TOKEN", "short")
    with pytest.raises(ConfigError, match="KEFU_ADMIN_TOKEN: must be at least 16 characters"):
        load_settings()


def test_documents_are_imported_listed_shown_and_deleted(client: httpx.Client, db: Engine) -> None:
    created = client.post("/v1/admin/kb/documents", json={"source": "policies/returns.md", "kind": "markdown",
                                                          "content": POLICY})
    assert created.status_code == 201, created.text
    document = created.json()["document"]
    assert (created.json()["status"], document["title"], document["passages"]) == ("new", "退货政策", 1)
    again = client.post("/v1/admin/kb/documents", json={"source": "policies/returns.md", "kind": "markdown",
                                                        "content": POLICY})
    assert (again.status_code, again.json()["status"]) == (200, "unchanged")
    uploaded = client.post("/v1/admin/kb/documents", params={"source": "常见问题.csv"}, content=SHEET.encode(),
                           headers={"Content-Type": "text/csv"})
    assert uploaded.status_code == 201, uploaded.text
    assert (uploaded.json()["document"]["kind"], uploaded.json()["document"]["faq"]) == ("faq_csv", 1)
    assert client.get("/v1/admin/kb/revision").json() == {"revision": 2}
    listed = client.get("/v1/admin/kb/documents").json()
    assert listed["revision"] == 2
    assert [d["source"] for d in listed["documents"]] == ["policies/returns.md", "常见问题.csv"]
    shown = client.get(f"/v1/admin/kb/documents/{uploaded.json()['document']['id']}").json()
    assert shown["faq"][0]["question"] == "几点发货" and shown["faq"][0]["similar"] == ["什么时候发货"]
    assert client.get(f"/v1/admin/kb/documents/{document['id']}").json()["passages"][0]["heading"] == "退货"
    deleted = client.delete(f"/v1/admin/kb/documents/{document['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"]["id"] == document["id"]
    missing = client.delete(f"/v1/admin/kb/documents/{document['id']}")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "no_document")
    assert client.get("/v1/admin/kb/documents/999").status_code == 404
    rows = audit(db)
    assert [kind for kind, _ in rows] == ["kb_imported", "kb_imported", "kb_deleted"]
    assert {detail["by"] for _, detail in rows} == {"admin-api"}
    assert all("退货" not in str(detail) for _, detail in rows)  # ids and counts, never text


@pytest.mark.parametrize(("request_kwargs", "status", "code", "said"), [
    ({"json": {"source": "a.md", "kind": "pdf", "content": "x"}}, 422, "invalid_kind", "markdown, text, html"),
    ({"json": {"source": "a.md", "kind": "markdown", "content": "  "}}, 422, "invalid_content", "'content'"),
    ({"json": {"kind": "markdown", "content": POLICY}}, 422, "invalid_source", "field 'source'"),
    ({"json": {"source": "a.md", "kind": "markdown", "content": "x" * 5000}}, 413, "body_too_large", "4096"),
    ({"params": {"source": "a.exe"}, "content": b"MZ"}, 415, "unsupported_type", "'.exe'"),
    ({"content": b"abc"}, 422, "invalid_source", "query parameter 'source'"),
    ({"params": {"source": "bad.pdf"}, "content": b"%PDF-1.4 not really"}, 422, "unreadable_document", "bad.pdf: "),
    ({"params": {"source": "faq.csv"}, "content": "问题,答案\n几点发货,\n".encode()}, 422, "unreadable_document",
     "faq.csv: "),
    ({"files": {"file": ("a.md", b"# x")}}, 415, "multipart_not_accepted", "--data-binary"),
    ({"content": b"{", "headers": {"Content-Type": "application/json"}}, 400, "malformed_json", "JSON"),
])
def test_a_document_that_cannot_be_imported_gets_an_error_a_person_can_act_on(
        client: httpx.Client, db: Engine, request_kwargs: dict[str, Any], status: int, code: str, said: str) -> None:
    response = client.post("/v1/admin/kb/documents", **request_kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and said in error["message"]
    assert audit(db) == []


def reply(db: Engine, source: ReplySource = ReplySource.MODEL) -> int:
    with transaction(make_session_factory(db)) as session:
        conversation = ConversationRecord(channel="web", account="default", peer=f"v{source}")
        session.add(conversation)
        session.flush()
        inbound = InboundRecord(conversation_id=conversation.id, channel="web", account="default",
                                external_id=f"m{source}", text="退款多久到账")
        session.add(inbound)
        session.flush()
        row = ReplyRecord(inbound_id=inbound.id, conversation_id=conversation.id, text="三到五个工作日。", source=source)
        session.add(row)
        session.flush()
        return row.id


def test_answers_are_approved_listed_and_revoked(client: httpx.Client, db: Engine) -> None:
    reply_id, fallback = reply(db), reply(db, ReplySource.FALLBACK)
    created = client.post("/v1/admin/answers", json={"reply_id": reply_id})
    assert created.status_code == 201, created.text
    assert created.json()["answer"] | {"approved_at": None, "document_id": None} == {
        "reply_id": reply_id, "question": "退款多久到账", "answer": "三到五个工作日。", "approved_at": None,
        "document_id": None}
    assert client.post("/v1/admin/answers", json={"reply_id": reply_id}).json()["status"] == "unchanged"
    refused = client.post("/v1/admin/answers", json={"reply_id": fallback})
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "not_approvable")
    assert "not a model answer" in refused.json()["error"]["message"]
    assert client.post("/v1/admin/answers", json={"reply_id": 999}).status_code == 404
    assert client.post("/v1/admin/answers", json={"reply_id": "1"}).json()["error"]["code"] == "invalid_reply_id"
    assert client.post("/v1/admin/answers", json={"reply_id": reply_id, "question": " "}).status_code == 422
    assert [a["reply_id"] for a in client.get("/v1/admin/answers").json()["answers"]] == [reply_id]
    assert client.delete(f"/v1/admin/answers/{reply_id}").json()["revoked"]["reply_id"] == reply_id
    assert client.delete(f"/v1/admin/answers/{reply_id}").status_code == 404
    assert client.get("/v1/admin/answers").json() == {"answers": []}
    assert [(kind, detail.get("by")) for kind, detail in audit(db)] == [
        ("kb_imported", "admin-api"), ("answer_approved", "admin-api"), ("kb_deleted", "admin-api"),
        ("answer_revoked", "admin-api")]


def test_deleting_an_approved_answer_s_document_revokes_it(client: httpx.Client, db: Engine) -> None:
    reply_id = reply(db)
    document_id = client.post("/v1/admin/answers", json={"reply_id": reply_id}).json()["answer"]["document_id"]
    deleted = client.delete(f"/v1/admin/kb/documents/{document_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["deleted"]["id"] == document_id
    assert deleted.json()["revoked"]["reply_id"] == reply_id
    assert client.get("/v1/admin/answers").json() == {"answers": []}
    assert [(kind, detail.get("by")) for kind, detail in audit(db)][-2:] == [("kb_deleted", "admin-api"),
                                                                           ("answer_revoked", "admin-api")]
    imported = client.post("/v1/admin/kb/documents", json={"source": "a.md", "kind": "markdown", "content": POLICY})
    plain = client.delete(f"/v1/admin/kb/documents/{imported.json()['document']['id']}").json()
    assert plain["revoked"] is None and audit(db)[-1][0] == "kb_deleted"


def test_an_faq_sheet_covering_an_approved_question_is_imported_with_a_warning(client: httpx.Client,
                                                                              db: Engine) -> None:
    reply_id = reply(db)
    assert client.post("/v1/admin/answers", json={"reply_id": reply_id}).status_code == 201
    sheet = SHEET + "退款多久到账,退款几天能到,验收后 3-5 个工作日原路退回。\n"
    response = client.post("/v1/admin/kb/documents", json={"source": "faq.csv", "kind": "faq_csv", "content": sheet})
    assert response.status_code == 201, response.text
    [warning] = response.json()["warnings"]
    assert f"the approved answer of reply #{reply_id}" in warning and f"kefu answers revoke {reply_id}" in warning
    policy = client.post("/v1/admin/kb/documents", json={"source": "a.md", "kind": "markdown", "content": POLICY})
    assert policy.json()["warnings"] == []

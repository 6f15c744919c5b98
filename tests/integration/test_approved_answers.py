"""Approved answers end to end on the real gateway with PostgreSQL, Redis, a Celery worker and llama.cpp: a web
chat question gets a model answer; the operator approves that reply through the admin API; a paraphrase of the
question from another visitor then gets the approved text back, decided in the gateway without the model (no
generation audit rows, no model on the reply, source ``approved``); the approval is audited. Revoking it at the
end leaves the shared PostgreSQL database without a knowledge base for later tests. The questions are
hand-written."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from models.tables import AuditEvent, ReplyRecord
from tests.integration.conftest import Stack, recv_until, start_stack

TOKEN = "integration-admin-token-0123456789"
QUESTION = "退货以后退款多久能到账？"
PARAPHRASE = "退货后退款几天能到账"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path, pg_url: str, redis_url: str) -> Iterator[Stack]:
    s = start_stack("redis-postgres", tmp_path_factory.mktemp("approved"), tiny_gguf, pg_url, redis_url,
                    admin_token=TOKEN)
    try:
        yield s
    finally:
        s.close()


def ask(stack: Stack, text: str) -> ReplyRecord:
    """The question from a new visitor over the web socket; its stored reply."""
    _, token = stack.visitor()
    with stack.ws(token) as ws:
        ws.send(json.dumps({"type": "message", "text": text}))
        frames = recv_until(ws, lambda f: f["type"] == "reply")
    reply_id = frames[-1]["reply_id"]
    with stack.sessions() as session:
        found = session.get(ReplyRecord, reply_id)
        assert found is not None
        return found


def kinds_of(stack: Stack, inbound_id: int) -> list[str]:
    with stack.sessions() as session:
        return list(session.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id)
                                    .order_by(AuditEvent.id)))


def test_an_approved_model_answer_answers_a_paraphrase_without_the_model(stack: Stack) -> None:
    first = ask(stack, QUESTION)
    assert (first.source, first.model is not None) == ("model", True)
    assert "generation_finished" in kinds_of(stack, first.inbound_id)
    admin = stack.http()
    admin.headers["Authorization"] = f"Bearer {TOKEN}"
    with admin:
        approved = admin.post("/v1/admin/answers", json={"reply_id": first.id})
        assert approved.status_code == 201, approved.text
        revision = admin.get("/v1/admin/kb/revision").json()["revision"]
        assert revision >= 1
        # the gateway's FAQ sync picks the approval up within its poll interval (5 s); until then the model answers
        deadline = time.monotonic() + 30
        again = ask(stack, PARAPHRASE)
        while again.source != "approved" and time.monotonic() < deadline:
            time.sleep(0.5)
            again = ask(stack, PARAPHRASE)
        assert (again.source, again.text, again.model) == ("approved", first.text, None)
        kinds = kinds_of(stack, again.inbound_id)
        assert "generation_started" not in kinds and "reply_stored" in kinds
        with stack.sessions() as session:
            stored = session.scalar(select(AuditEvent).where(AuditEvent.inbound_id == again.inbound_id,
                                                             AuditEvent.kind == "reply_stored"))
            approval = session.scalar(select(AuditEvent).where(AuditEvent.kind == "answer_approved",
                                                               AuditEvent.reply_id == first.id))
        assert stored is not None and stored.detail["rule"] == f"approved_answer:{first.id}"
        assert approval is not None and approval.detail["by"] == "admin-api"
        assert admin.delete(f"/v1/admin/answers/{first.id}").status_code == 200


def test_the_admin_api_refuses_a_wrong_token_and_a_reply_that_is_no_model_answer(stack: Stack) -> None:
    with stack.http() as http:
        wrong = http.get("/v1/admin/answers", headers={"Authorization": "Bearer not-the-token-0123456789"})
        assert (wrong.status_code, wrong.headers["www-authenticate"][:6]) == (401, "Bearer")
        missing = http.post("/v1/admin/answers", json={"reply_id": 10**9},
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "no_reply")

"""Grounded answers on a real stack (embedded, and Redis + PostgreSQL): a knowledge base imported while the
stack runs reaches the worker, the model is given the passage that answers the question, and the reply's
audit trail says which (``kb_used``); a question the knowledge base does not cover gets none.

The tiny random-weight model cannot show what it read, so the prompt is checked by its exact size: the
worker's ``prompt_tokens`` equal the token count of the prompt composed here from the audited passages
(system prompt, knowledge block, question; the web has no person, so no hand-off hint). The passages are
hand-written for this test (a fictional shop); the document is deleted at the end, so the shared
PostgreSQL database has no knowledge base for later tests.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from models.infra.db import transaction
from models.knowledge import store
from models.tables import AuditEvent, KbDocumentRecord, KbPassageRecord
from tests.integration.conftest import BACKENDS, Stack, recv_until, start_stack, wait_for
from workers import kb_command
from workers.context import compose
from workers.llm.engine import LlamaEngine
from workers.llm.model_files import resolve_model
from workers.llm.prompts import knowledge_block, knowledge_chars

RETURNS = "签收后七天内商品完好可以无理由退货。"
POLICY = f"# 售后政策\n\n## 退货\n\n{RETURNS}\n\n## 发票\n\n电子发票在发货后开具。\n"
QUESTION = "请问可以无理由退货吗？"


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    s = start_stack(backend, tmp_path_factory.mktemp(f"kb-{backend}"), tiny_gguf, pg, rds)
    try:
        yield s
    finally:
        s.close()


def ask(stack: Stack, text: str) -> dict[str, AuditEvent]:
    """The question from a new visitor; its audit rows by kind once its reply is stored."""
    _, token = stack.visitor()
    with stack.ws(token) as ws:
        ws.send(json.dumps({"type": "message", "text": text}))
        frames = recv_until(ws, lambda f: f["type"] == "reply")
    message_id = next(f["message_id"] for f in frames if f["type"] == "accepted")

    def rows() -> dict[str, AuditEvent]:
        with stack.sessions() as session:
            found = session.scalars(select(AuditEvent).where(AuditEvent.inbound_id == message_id)).all()
        return {e.kind: e for e in found}

    return wait_for(lambda: (found := rows()) and "reply_stored" in found and found, timeout=30)


def expected_prompt_tokens(stack: Stack, passage_ids: list[int]) -> int:
    """The token count of the prompt the worker should have composed for QUESTION with these passages."""
    with stack.sessions() as session:
        rows = {p.id: p for p in session.scalars(select(KbPassageRecord).where(KbPassageRecord.id.in_(passage_ids)))}
        titles = {d.id: d.title for d in session.scalars(select(KbDocumentRecord))}
    sources = [(titles[rows[i].document_id], rows[i].heading, rows[i].text) for i in passage_ids]
    settings = stack.settings
    block = knowledge_block(sources, offer_person=False, max_chars=knowledge_chars(settings.n_ctx))
    turns = compose(settings.system_prompt, [], QUESTION, settings.context_turns, knowledge=block)
    engine = LlamaEngine(resolve_model(settings), settings)
    try:
        return len(engine.prompt_tokens(turns))
    finally:
        engine.close()


def test_a_question_answered_by_a_passage_gets_that_passage(stack: Stack, tmp_path: Path) -> None:
    before = ask(stack, QUESTION)
    assert "kb_used" not in before  # no knowledge base yet: the prompt is as it always was
    with stack.sessions() as session:
        revision_before = store.revision(session)
    (tmp_path / "policy.md").write_text(POLICY)
    assert kb_command.import_paths(stack.sessions, [str(tmp_path / "policy.md")], io.StringIO(), io.StringIO()) == 0
    try:
        with stack.sessions() as session:
            passage_id = session.scalars(select(KbPassageRecord.id).where(KbPassageRecord.text == RETURNS)).one()
        # the worker looks at the knowledge base's revision every few seconds: ask until it has
        after = wait_for(lambda: (rows := ask(stack, QUESTION)) and "kb_used" in rows and rows, timeout=60,
                         interval=0.5)
        used = after["kb_used"].detail
        assert used["passages"] == [passage_id] and used["faq"] == []
        assert used["kb_revision"] > revision_before
        assert after["kb_used"].reply_id == after["reply_stored"].reply_id
        prompt_tokens = after["generation_finished"].detail["prompt_tokens"]
        assert prompt_tokens == expected_prompt_tokens(stack, used["passages"])
        assert prompt_tokens > before["generation_finished"].detail["prompt_tokens"] + len(RETURNS)

        uncovered = ask(stack, "你们的店铺在哪个城市？")
        assert uncovered["kb_used"].detail["passages"] == [] and uncovered["kb_used"].detail["faq"] == []
    finally:
        with transaction(stack.sessions) as session:
            for document in store.documents(session):
                store.delete_document(session, document.id)

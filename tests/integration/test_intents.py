"""Intents end to end (models.intents, workers.intent_model), on both backends and with the tiny random-weight Qwen3.

- A message through the real web chat has the rules' intent in its inbound row and in its ``received`` audit row.
- An intent route (KEFU_INTENT_ROUTES) decides on the gateway: the web has no person, so a complaint gets the honest
  answer, audited ``intent_route:complaint_none_available``.
- A message the rules cannot place gets the model's label (KEFU_INTENT_MODEL=on): llama.cpp's grammar keeps even
  random weights to a valid label, stored on the row and audited ``intent`` with source ``model``.
- The grammar plumbing of both engines: a label of the set every time, where the same weights without a grammar
  write something else.
Messages are hand-written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from models import intents
from models.envelope import Turn
from models.settings import Settings
from models.tables import AuditEvent, InboundRecord
from tests.integration.conftest import BACKENDS, Stack, recv_until, start_stack, wait_for
from workers import intent_model
from workers.llm.batched import BatchedEngine
from workers.llm.engine import LlamaEngine
from workers.llm.model_files import resolve_model

ROUTES = {"complaint": "hand_off"}


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    s = start_stack(backend, tmp_path_factory.mktemp(f"intents-{backend}"), tiny_gguf, pg, rds,
                    intent_model="on", intent_routes=ROUTES)
    try:
        yield s
    finally:
        s.close()


def send(stack: Stack, text: str) -> int:
    _, token = stack.visitor()
    with stack.ws(token) as ws:
        ws.send(json.dumps({"type": "message", "text": text}))
        frames = recv_until(ws, lambda f: f["type"] == "reply")
    message_id = int(next(f["message_id"] for f in frames if f["type"] == "accepted"))
    wait_for(lambda: "reply_stored" in [e.kind for e in trail(stack, message_id)], timeout=60)
    return message_id


def trail(stack: Stack, inbound_id: int) -> list[AuditEvent]:
    with stack.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.inbound_id == inbound_id)
                                    .order_by(AuditEvent.id)))


def stored_intent(stack: Stack, inbound_id: int) -> str | None:
    with stack.sessions() as session:
        return session.scalars(select(InboundRecord.intent).where(InboundRecord.id == inbound_id)).one()


def test_the_gateway_stores_and_audits_the_rules_intent(stack: Stack) -> None:
    message_id = send(stack, "我的快递到哪了")
    assert stored_intent(stack, message_id) == "shipping"
    events = trail(stack, message_id)
    received = next(e for e in events if e.kind == "received")
    assert received.detail["intent"] == "shipping"
    assert "intent" not in [e.kind for e in events]  # the rules were sure: the model was not asked


def test_a_routed_intent_is_decided_at_the_gateway(stack: Stack) -> None:
    message_id = send(stack, "说好的今天到，结果又没到")
    assert stored_intent(stack, message_id) == "complaint"
    events = trail(stack, message_id)
    stored = next(e for e in events if e.kind == "reply_stored")
    assert stored.detail["rule"] == "intent_route:complaint_none_available"
    assert "generation_started" not in [e.kind for e in events]


def test_the_model_labels_what_the_rules_could_not(stack: Stack) -> None:
    message_id = send(stack, "今天天气怎么样")
    labels = intents.model_labels(intents.intents(stack.settings))
    label = stored_intent(stack, message_id)
    assert label in labels
    events = trail(stack, message_id)
    assert next(e for e in events if e.kind == "received").detail["intent"] == "out_of_scope"
    audited = next(e for e in events if e.kind == "intent")
    assert (audited.detail["intent"], audited.detail["source"]) == (label, "model")
    stored = next(e for e in events if e.kind == "reply_stored")
    # the model's label is routed like the rules' (this random-weight model may well call it a complaint)
    assert (stored.detail.get("rule") == "intent_route:complaint_none_available") == (label == "complaint")


@pytest.mark.parametrize("engine_class", [LlamaEngine, BatchedEngine])
def test_the_grammar_keeps_random_weights_to_a_label(tiny_gguf: Path, engine_class: type) -> None:
    settings = Settings(model_path=tiny_gguf, temperature=0.0, max_tokens=24, n_ctx=1024, seed=7, n_slots=2)
    engine = engine_class(resolve_model(settings), settings)
    try:
        assert intent_model.model_on(settings, engine)  # auto: the GGUF is a qwen3
        assert not intent_model.model_on(settings.model_copy(update={"intent_model": "off"}), engine)
        labels = intents.model_labels(intents.intents(settings))
        for text in ("今天天气怎么样", "这个手机防水吗", "给我讲个笑话", "hello"):
            found = intent_model.ask(settings, engine, text, time.monotonic() + 20)
            assert found is not None and found.label in labels and found.source == "model"
        turns = [Turn("system", intents.model_instruction(intents.intents(settings))), Turn("user", "今天天气怎么样")]
        assert engine.generate(turns).text.strip() not in labels  # without the grammar: not a label
    finally:
        engine.close()

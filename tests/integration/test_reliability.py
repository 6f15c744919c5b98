"""Nothing accepted is lost: a broker outage at ingress, a worker killed mid-generation, a broken model.

Each test runs real processes on both backends and checks the customer still gets exactly one reply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from channels.ingress import Ingress
from models.dialogue import HandOff, fallback_reply
from models.envelope import ConversationKey, Inbound, utcnow
from models.infra.queues import Publisher, make_celery
from models.settings import Settings
from models.tables import AuditEvent, InboundRecord, ReplyRecord
from tests.integration.conftest import BACKENDS, Stack, recv_until, start_stack, wait_for
from tests.synthetic_gguf import Qwen3Shape, write_qwen3_gguf
from workers import runtime as worker_runtime
from workers import tasks
from workers.demo.processes import WorkerProcess

# Short limits so a lost task is recovered within seconds instead of minutes.
FAST_RECOVERY = {
    "generation_soft_limit_s": 3,
    "generation_hard_limit_s": 4,
    "visibility_timeout_s": 6,
    "requeue_after_s": 6,
    "max_tokens": 4000,
    "n_ctx": 4096,
}


@pytest.fixture(scope="module")
def slow_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough that a long answer takes seconds on this CPU; a large vocab keeps it from stopping early."""
    shape = Qwen3Shape(n_layer=6, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=768)
    return write_qwen3_gguf(tmp_path_factory.mktemp("slow") / "slow-qwen3.gguf", shape, vocab_size=16_000)


def recovering_stack(tmp_path: Path, model: Path, pg_url: str | None, redis_url: str | None,
                     backend: str = "redis-postgres") -> Iterator[Stack]:
    """Gateway and worker processes with recovery limits of seconds, not a minute; this process's sweeper and
    tasks configured for the same stack."""
    stack = start_stack(backend, tmp_path, model, pg_url, redis_url, **FAST_RECOVERY)
    worker_runtime.configure(stack.settings)
    try:
        yield stack
    finally:
        stack.close()
        worker_runtime.shutdown()


@pytest.fixture(params=BACKENDS)
def fast_stack(request: pytest.FixtureRequest, tmp_path: Path, slow_gguf: Path) -> Iterator[Stack]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    yield from recovering_stack(tmp_path, slow_gguf, pg, rds, backend)


def kinds(stack: Stack, inbound_id: int) -> list[str]:
    with stack.sessions() as s:
        return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id).order_by(AuditEvent.id)))


def reply_count(stack: Stack, inbound_id: int) -> int:
    with stack.sessions() as s:
        return s.scalar(select(func.count()).select_from(ReplyRecord).where(ReplyRecord.inbound_id == inbound_id)) or 0


def backdate(stack: Stack, inbound_id: int, seconds: int) -> None:
    with stack.sessions.begin() as s:
        past = utcnow() - timedelta(seconds=seconds)
        s.execute(update(InboundRecord).where(InboundRecord.id == inbound_id).values(received_at=past, queued_at=past))


def test_broker_outage_at_ingress_is_recovered_by_the_sweeper(fast_stack: Stack) -> None:
    dead = fast_stack.settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "publish_timeout_s": 0.5})
    ingress = Ingress(fast_stack.sessions, Publisher(make_celery(dead, "dead-broker")))
    key = ConversationKey("web", "default", "v_outage")
    accepted = ingress.accept(Inbound(key, "outage-1", "请问怎么退货？"))
    assert accepted.queued is False and accepted.duplicate is False
    assert kinds(fast_stack, accepted.inbound_id) == ["received", "queue_failed"]

    backdate(fast_stack, accepted.inbound_id, 60)
    assert tasks.sweep()["requeued"] == 1
    wait_for(lambda: reply_count(fast_stack, accepted.inbound_id) == 1, timeout=30)
    trail = kinds(fast_stack, accepted.inbound_id)
    assert trail[:4] == ["received", "queue_failed", "requeued", "generation_started"]
    assert tasks.sweep()["requeued"] == 0  # answered: nothing left to publish


def test_worker_killed_mid_generation_still_answers_once(fast_stack: Stack) -> None:
    _, token = fast_stack.visitor()
    with fast_stack.ws(token) as ws:
        ws.send(json.dumps({"type": "message", "text": "我的快递到哪里了？", "client_msg_id": "chaos"}))
        message_id = recv_until(ws, lambda f: f["type"] == "accepted")[-1]["message_id"]
        wait_for(lambda: "generation_started" in kinds(fast_stack, message_id), timeout=30, interval=0.01)
        fast_stack.worker.kill()  # SIGKILL: no ack, no cleanup, lock left behind
        assert reply_count(fast_stack, message_id) == 0

        replacement = WorkerProcess(fast_stack.env, fast_stack.settings.data_dir / "worker2.log")
        fast_stack.worker = replacement
        assert replacement.wait(timeout=60)
        if fast_stack.backend == "embedded":
            # the SQLite queue does not restore a killed worker's message; the sweeper does
            backdate(fast_stack, message_id, 600)
            assert tasks.sweep()["requeued"] == 1
        # Redis restores the unacked message after the visibility timeout (6 s here)
        reply = recv_until(ws, lambda f: f["type"] == "reply" and f["message_id"] == message_id, timeout=60)[-1]
    assert reply_count(fast_stack, message_id) == 1
    trail = kinds(fast_stack, message_id)
    assert trail.count("generation_started") == 2 and trail.count("reply_stored") == 1
    with fast_stack.sessions() as s:
        stored = s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == message_id)).one()
        assert stored.id == reply["reply_id"] and stored.source == "model"


def test_a_broken_model_still_answers_with_the_fallback(tmp_path: Path, tiny_gguf: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)  # a truncated file: llama.cpp refuses to load it
    stack = start_stack("embedded", tmp_path, broken, None, None)
    try:
        _, token = stack.visitor()
        with stack.ws(token) as ws:
            ws.send(json.dumps({"type": "message", "text": "在吗？"}))
            frames = recv_until(ws, lambda f: f["type"] == "reply")
        message_id = frames[0]["message_id"]
        assert frames[-1]["text"] == fallback_reply(Settings(), HandOff.NOBODY)  # the web has no person
        trail = kinds(stack, message_id)
        assert "generation_failed" in trail and "generation_finished" not in trail
        with stack.sessions() as s:
            reason = s.scalars(select(AuditEvent.detail).where(
                AuditEvent.inbound_id == message_id, AuditEvent.kind == "generation_failed")).one()["reason"]
            assert reason  # the operator sees why
            assert s.scalars(select(ReplyRecord.source).where(ReplyRecord.inbound_id == message_id)).one() == "fallback"
    finally:
        stack.close()


def test_a_reply_from_an_unknown_source_fails_once_instead_of_looping(fast_stack: Stack) -> None:
    """A reply written by a newer Kefu (a source this version does not know) is recorded as failed, not retried
    by the deliver task and the sweeper for ever."""
    from models.replies import Answer
    from models.tables import DeliveryRecord

    ingress = Ingress(fast_stack.sessions, Publisher(make_celery(fast_stack.settings, "newer-kefu")))
    accepted, _ = ingress.accept_answered(Inbound(ConversationKey("web", "default", "v_newer"), "newer-1", "在吗？"),
                                          Answer("新版本的答案", "knowledge"), passive=False)  # type: ignore[arg-type]
    wait_for(lambda: "delivery_failed" in kinds(fast_stack, accepted.inbound_id), timeout=30)
    with fast_stack.sessions() as s:
        delivery = s.scalars(select(DeliveryRecord)
                             .join(ReplyRecord, ReplyRecord.id == DeliveryRecord.reply_id)
                             .where(ReplyRecord.inbound_id == accepted.inbound_id)).one()
    assert delivery.status == "failed" and "unknown reply source 'knowledge'" in (delivery.last_error or "")
    assert tasks.sweep()["redelivered"] == 0

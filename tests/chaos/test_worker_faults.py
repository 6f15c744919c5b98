"""The LLM worker under faults: order, deadlines and generated text hold, and a crash is recovered from.

Promises checked (from the database):
- order after recovery: a conversation's messages are answered in the order they arrived, whichever task
  the broker or the sweeper hands back first, however old the stuck message is;
- kill -9 or SIGTERM mid-generation: once a worker runs again, every message is answered exactly once and in
  order, with the broker's redelivery and the sweeper both firing; a task handed back by both at once runs the
  model once;
- a model step that does not end: the customer's answer (here the fallback) is stored at the deadline,
  audited as a deadline miss, while the step is still stuck;
- the deadline counts from the start of the answer, not from the model call (a slow knowledge lookup);
- a database that refuses at store time: the retry stores the text already generated, with its audit facts
  (``kb_used`` too); the model is not asked again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from channels.ingress import Ingress
from models.dialogue import HandOff, fallback_reply
from models.envelope import ConversationKey, Inbound, Turn
from models.infra.migrate import upgrade
from models.infra.queues import Publisher, make_celery
from models.settings import Settings
from models.tables import AuditEvent, InboundRecord, ReplyRecord
from tests.chaos.conftest import recovering_stack
from tests.chaos.faults import FaultProxy
from tests.conftest import settings_kwargs
from tests.integration.conftest import Stack, settled, wait_for
from tests.integration.test_reliability import FAST_RECOVERY, backdate, kinds, reply_count, slow_gguf  # noqa: F401
from workers import answering, tasks
from workers import runtime as worker_runtime
from workers.demo.processes import WorkerProcess
from workers.grounding import Grounding, Source
from workers.llm.engine import Generation, LlamaEngine, TextCallback
from workers.runtime import Runtime

PATIENCE_S = 30  # far past any deadline here: only a caller that waits for a stuck step takes this long


@pytest.fixture
def slow_stack(tmp_path: Path, slow_gguf: Path, pg_url: str, redis_url: str) -> Iterator[Stack]:  # noqa: F811
    yield from recovering_stack(tmp_path, slow_gguf, pg_url, redis_url)


def _post_all(stack: Stack, texts: list[str], tag: str) -> list[int]:
    visitor_id, token = stack.visitor()
    with stack.http() as http:
        return [http.post("/v1/web/messages", headers={"Authorization": f"Bearer {token}"},
                          json={"visitor_id": visitor_id, "text": t, "client_msg_id": f"{tag}{n}"}).json()["message_id"]
                for n, t in enumerate(texts)]


def _reply_ids(stack: Stack, ids: list[int]) -> list[int]:
    with stack.sessions() as s:
        return [s.scalars(select(ReplyRecord.id).where(ReplyRecord.inbound_id == i)).one() for i in ids]


def test_an_older_message_whose_task_was_lost_is_answered_first(tiny_stack: Stack) -> None:
    """The later message's task comes back first (the broker's redelivery or the sweeper's publish of the older
    one is later or lost); the older message is past ``requeue_after_s``, which the ordering check used to
    ignore, so the later one was answered first."""
    stack = tiny_stack
    stack.worker.stop()
    ids = _post_all(stack, ["一：我想退货", "二：订单号是多少？"], "lost")
    broker = redis.Redis.from_url(stack.settings.broker_url or "")
    broker.flushdb()  # both tasks are lost
    broker.close()
    for i in ids:
        backdate(stack, i, FAST_RECOVERY["requeue_after_s"] + 1)
    stack.worker = WorkerProcess(stack.env, stack.settings.data_dir / "worker2.log")
    assert stack.worker.wait(timeout=60)

    worker_runtime.runtime().publisher.handle_inbound(ids[1])  # only the later message's task comes back
    wait_for(lambda: reply_count(stack, ids[1]) == 1, timeout=60)
    assert reply_count(stack, ids[0]) == 1, "the later message was answered while the older one waited"
    first, second = _reply_ids(stack, ids)
    assert first < second
    assert settled(lambda: [reply_count(stack, i) for i in ids]) == [1, 1]


def test_the_broker_and_the_sweeper_handing_a_message_back_at_once_answer_it_once(tiny_stack: Stack) -> None:
    """A message's task comes back three times together (its original, Redis's redelivery, the sweeper's)."""
    stack = tiny_stack
    stack.worker.stop()
    (message,) = _post_all(stack, ["我的快递到哪里了？"], "twice")
    backdate(stack, message, FAST_RECOVERY["requeue_after_s"] + 1)
    assert tasks.sweep()["requeued"] == 1
    worker_runtime.runtime().publisher.handle_inbound(message)  # as Redis hands back an unacknowledged task
    stack.worker = WorkerProcess(stack.env, stack.settings.data_dir / "worker2.log")
    assert stack.worker.wait(timeout=60)
    wait_for(lambda: reply_count(stack, message) == 1, timeout=60)
    assert settled(lambda: reply_count(stack, message)) == 1
    trail = kinds(stack, message)
    assert trail.count("generation_started") == 1 and trail.count("reply_stored") == 1


@pytest.mark.parametrize("signal", ["SIGKILL", "SIGTERM"])
def test_a_worker_stopped_mid_generation_recovers_once_and_in_order(slow_stack: Stack, signal: str) -> None:
    """kill -9 (no ack, the conversation's lock left behind) or SIGTERM (Celery's warm shutdown) while the first
    of three messages is generating; a new worker starts; the broker's visibility timeout and the sweeper (run
    here every second) both hand the messages back."""
    stack = slow_stack
    ids = _post_all(stack, ["一：你好", "二：我想查订单", "三：谢谢"], signal)
    wait_for(lambda: "generation_started" in kinds(stack, ids[0]), timeout=30, interval=0.01)
    if signal == "SIGKILL":
        stack.worker.kill()
        assert reply_count(stack, ids[0]) == 0
    else:
        stack.worker.stop()  # the running generation ends at its deadline and is stored; the rest wait
    killed = time.monotonic()

    stack.worker = WorkerProcess(stack.env, stack.settings.data_dir / "worker2.log")
    assert stack.worker.wait(timeout=60)
    restarted = time.monotonic()

    def all_answered() -> bool:
        tasks.sweep()  # the sweeper, as beat runs it, alongside the broker's redelivery
        return all(reply_count(stack, i) == 1 for i in ids)

    wait_for(all_answered, timeout=120, interval=1.0)
    print(f"recovery after {signal}: all answered {time.monotonic() - killed:.1f}s after the kill "
          f"({time.monotonic() - restarted:.1f}s after the new worker was ready); "
          f"visibility {FAST_RECOVERY['visibility_timeout_s']}s, requeue {FAST_RECOVERY['requeue_after_s']}s")
    assert settled(lambda: [reply_count(stack, i) for i in ids]) == [1, 1, 1]
    replies = _reply_ids(stack, ids)
    assert replies == sorted(replies)  # answered in the order they were sent
    for i in ids:
        assert kinds(stack, i).count("reply_stored") == 1


# --- in-process: the worker's own code against real PostgreSQL, Redis and llama.cpp ----------------------------

def _accepted(settings: Settings, sessions: Any, peer: str, text: str) -> tuple[InboundRecord, ConversationKey]:
    """A stored message whose task is not published (no worker here: the test answers it itself)."""
    dead = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "publish_timeout_s": 0.5})
    key = ConversationKey("web", "default", peer)
    accepted = Ingress(sessions, Publisher(make_celery(dead, "dead-broker"))).accept(Inbound(key, f"{peer}-1", text))
    with sessions() as s:
        row = s.get(InboundRecord, accepted.inbound_id)
    assert row is not None
    return row, key


def _trail(rt: Runtime, inbound_id: int) -> list[tuple[str, dict[str, Any]]]:
    with rt.sessions() as s:
        return [(e.kind, e.detail) for e in s.scalars(
            select(AuditEvent).where(AuditEvent.inbound_id == inbound_id).order_by(AuditEvent.id))]


@pytest.fixture
def worker_rt(tmp_path: Path, tiny_gguf: Path, pg_url: str, redis_url: str) -> Iterator[Runtime]:
    values = settings_kwargs("redis-postgres", tmp_path, tiny_gguf, pg_url, redis_url)
    settings = Settings(**values, engine="simple", generation_soft_limit_s=2, generation_hard_limit_s=3)
    upgrade(settings)
    rt = Runtime(settings)
    try:
        yield rt
    finally:
        rt.close()


def test_a_stuck_model_step_still_answers_at_the_deadline(worker_rt: Runtime) -> None:
    """A step that does not end (here: the test holds the engine's run lock, which every step holds): the
    fallback is stored at the deadline and audited as a deadline miss while the step is still stuck."""
    rt = worker_rt
    row, key = _accepted(rt.settings, rt.sessions, "v_stuck", "在吗？")
    engine = rt.llm
    assert isinstance(engine, LlamaEngine)
    engine.load()
    done: list[int] = []
    engine._run_lock.acquire()
    try:
        thread = threading.Thread(target=lambda: done.append(answering.answer(rt, row, key)), daemon=True)
        thread.start()
        thread.join(PATIENCE_S)
        answered_while_stuck = bool(done)
    finally:
        engine._run_lock.release()
    assert answered_while_stuck, "the answer waited for the stuck step"
    with rt.sessions() as s:
        reply = s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == row.id)).one()
    assert reply.id == done[0] and reply.source == "fallback"
    assert reply.text == fallback_reply(rt.settings, HandOff.NOBODY)
    trail = _trail(rt, row.id)
    assert [d["finish_reason"] for k, d in trail if k == "generation_finished"] == ["deadline_missed"]
    assert [d["reason"] for k, d in trail if k == "generation_failed"] == [answering.MISSED_REASON]


class _DatabaseGoesAway:
    """The real engine; the database stops answering as the first answer is finished (the store is next)."""

    def __init__(self, engine: Any, proxy: FaultProxy) -> None:
        self.engine, self.proxy = engine, proxy
        self.generated: list[str] = []

    @property
    def model_name(self) -> str:
        return str(self.engine.model_name)

    def load(self) -> Any:
        return self.engine.load()

    def close(self) -> None:
        self.engine.close()

    def generate(self, turns: list[Turn], *, on_text: TextCallback | None = None,
                 deadline: float | None = None) -> Generation:
        generation: Generation = self.engine.generate(turns, on_text=on_text, deadline=deadline)
        self.generated.append(generation.text)
        if len(self.generated) == 1:
            self.proxy.refuse()
        return generation


def test_a_reply_whose_store_failed_is_stored_by_the_retry_without_generating_again(worker_rt: Runtime) -> None:
    direct = worker_rt.settings
    url = make_url(direct.database_url or "")
    proxy = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    rt = Runtime(direct.model_copy(update={
        "database_url": url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        "generation_soft_limit_s": 30, "generation_hard_limit_s": 40}))
    model = _DatabaseGoesAway(rt.llm, proxy)
    rt.__dict__["llm"] = model  # the cached engine, wrapped
    grounding = Grounding(3, (Source("passage", 7, "物流说明", "查询", "发货后可在订单页查看物流。"),))
    rt.__dict__["knowledge"] = SimpleNamespace(lookup=lambda *texts: grounding)  # a knowledge base that has it
    try:
        row, key = _accepted(direct, worker_rt.sessions, "v_blip", "我的快递到哪里了？")
        with pytest.raises(DBAPIError):  # the connection is refused
            answering.answer(rt, row, key)
        with worker_rt.sessions() as s:
            assert s.scalar(select(ReplyRecord.id).where(ReplyRecord.inbound_id == row.id)) is None
        proxy.passthrough()  # the database is back; the task's retry runs
        reply_id = answering.answer(rt, row, key)
    finally:
        proxy.passthrough()
        rt.close()
        proxy.close()
    assert len(model.generated) == 1, "the model was asked again"
    with worker_rt.sessions() as s:
        reply = s.get(ReplyRecord, reply_id)
    assert reply is not None and reply.source == "model" and reply.text == model.generated[0]
    trail = _trail(worker_rt, row.id)
    kinds_ = [k for k, _ in trail]
    assert kinds_.count("generation_started") == 1 and kinds_.count("generation_finished") == 1
    assert kinds_.count("reply_stored") == 1
    assert [d for k, d in trail if k == "kb_used"] == [grounding.audit_detail()]  # what the model was given


class _RecordsDeadlines:
    """The real engine, recording the deadline each generation was given."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.deadlines: list[float | None] = []

    @property
    def model_name(self) -> str:
        return str(self.engine.model_name)

    def close(self) -> None:
        self.engine.close()

    def generate(self, turns: list[Turn], *, on_text: TextCallback | None = None,
                 deadline: float | None = None) -> Generation:
        self.deadlines.append(deadline)
        generation: Generation = self.engine.generate(turns, on_text=on_text, deadline=deadline)
        return generation


class _SlowLookup:
    """The real knowledge base, slow to answer (an embedding model on a busy CPU): records when it was asked."""

    def __init__(self, knowledge: Any) -> None:
        self.knowledge = knowledge
        self.asked_at: list[float] = []

    def lookup(self, *texts: str) -> Any:
        self.asked_at.append(time.monotonic())
        time.sleep(0.05)
        return self.knowledge.lookup(*texts)


def test_the_generation_deadline_counts_from_the_start_of_the_answer_not_from_the_model_call(
        worker_rt: Runtime) -> None:
    """Celery's soft limit counts from the task's start; work before the model (history, knowledge lookup) must not
    push the engine's deadline past it."""
    rt = worker_rt
    model, knowledge = _RecordsDeadlines(rt.llm), _SlowLookup(rt.knowledge)
    rt.__dict__["llm"], rt.__dict__["knowledge"] = model, knowledge  # the cached parts, wrapped
    row, key = _accepted(rt.settings, rt.sessions, "v_deadline", "你好")
    answering.answer(rt, row, key)
    soft = rt.settings.generation_soft_limit_s
    (deadline,) = model.deadlines
    assert deadline is not None
    begun = deadline - (soft - min(5.0, soft * 0.2))
    assert begun <= knowledge.asked_at[0], "the deadline was counted from after the knowledge lookup"

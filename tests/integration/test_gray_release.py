"""The gray release on real parts: a canary that fails is taken out automatically within its window and its
conversations moved back; a canary that works keeps its share, each conversation its model.

A real stack (gateway, broker, a `kefu worker` process, llama.cpp with the random-weight Qwen3 as the primary), on
both backends (the embedded SQLite stores; Redis and PostgreSQL). The canary is a GGUF that cannot be loaded, on half
of the conversations, judged after 4 answers. Web visitors each send one message: those whose conversation hashes
onto the canary get the fallback (the canary named in the reply), until the fourth such failure takes the canary out
— audited ``model_rolled_back`` once, ``kefu_canary_rollbacks_total`` and ``kefu_model_share`` on the worker's
/metrics, state ``rolled_back`` for ``kefu model status``. Then every conversation that was on the canary is answered
by the primary; no message went unanswered. The working canary is an OpenAI-compatible upstream (llama-cpp-python's
own server) reached with KEFU_CANARY_API_KEY.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from models.tables import AuditEvent, InboundRecord, ReplyRecord
from tests.integration.conftest import BACKENDS, Stack, start_stack, wait_for
from tests.metrics_scrape import scrape
from tests.openai_server import OpenAIServer
from workers import gray_release, model_command
from workers.demo.processes import free_port

MIN_REQUESTS = 4


@pytest.fixture(scope="module", params=BACKENDS)
def canary_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 tiny_gguf: Path) -> Iterator[Stack]:
    backend = request.param
    pg = request.getfixturevalue("module_pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    data_dir = tmp_path_factory.mktemp(f"canary-{backend}")
    broken = data_dir / "broken-canary.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 60)  # a GGUF header and nothing else: llama.cpp refuses to load it
    # the canary's id hashes this run's own path: nothing an earlier run left in Redis is read back
    stack = start_stack(backend, data_dir, tiny_gguf, pg, rds, canary_backend=str(broken), canary_share=0.5,
                        canary_min_requests=MIN_REQUESTS, canary_max_error_rate=0.05, canary_window_s=300,
                        worker_metrics_port=free_port(), rate_limit_ip="", rate_limit_visitor="")
    try:
        yield stack
    finally:
        stack.close()


def ask(stack: Stack, token: str, visitor_id: str, text: str) -> int:
    with stack.http() as http:
        r = http.post("/v1/web/messages", json={"visitor_id": visitor_id, "text": text},
                      headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 202, r.text
    return int(r.json()["message_id"])


def reply_of(stack: Stack, inbound_id: int) -> tuple[int, str, str | None]:
    """(conversation id, source, model) of the message's reply, once stored."""
    def stored() -> tuple[int, str, str | None] | None:
        with stack.sessions() as session:
            row = session.execute(select(ReplyRecord.conversation_id, ReplyRecord.source, ReplyRecord.model)
                                  .where(ReplyRecord.inbound_id == inbound_id)).first()
            return None if row is None else (int(row[0]), str(row[1]), row[2])
    found: tuple[int, str, str | None] = wait_for(stored, timeout=90)
    return found


def status(stack: Stack) -> dict[str, Any]:
    out = io.StringIO()
    assert model_command.run(stack.settings, "status", as_json=True, out=out) == 0
    found: dict[str, Any] = json.loads(out.getvalue())
    return found


def test_a_failing_canary_is_taken_out_and_its_conversations_move_back(canary_stack: Stack) -> None:
    stack = canary_stack
    canary = gray_release.canary_of(stack.settings)
    assert canary is not None and canary.name == "broken-canary"
    assert status(stack)["state"] == "active"
    visitors = [stack.visitor() for _ in range(30)]  # more than 4 of them hash onto the canary: P(not) < 1e-4
    first: dict[int, tuple[str, str, str | None]] = {}  # conversation -> (visitor, source, model) of its first reply
    for visitor_id, token in visitors:  # one at a time: the order of the canary's answers is the order asked
        conversation, source, model = reply_of(stack, ask(stack, token, visitor_id, "你好，请问怎么退货？"))
        first[conversation] = (visitor_id, source, model)
    on_canary = [c for c in first if gray_release.on_canary(canary.id, c, 0.5)]
    assert len(on_canary) > MIN_REQUESTS, "too few conversations hashed onto the canary to take it out"

    failed = [c for c in on_canary if first[c][1:] == ("fallback", "broken-canary")]
    assert failed == on_canary[:MIN_REQUESTS], "the canary answered its conversations until the fourth failure"
    for c in on_canary[MIN_REQUESTS:]:  # after the rollback: the primary, though the hash says canary
        assert first[c][1:] == ("model", "tiny-qwen3")
    for c in set(first) - set(on_canary):
        assert first[c][1:] == ("model", "tiny-qwen3")  # the primary's share never saw the canary

    with stack.sessions() as session:
        rolled = [e for e in session.scalars(select(AuditEvent).where(AuditEvent.kind == "model_rolled_back"))]
        failures = [e.detail for e in session.scalars(select(AuditEvent).where(AuditEvent.kind == "generation_failed"))]
        unanswered = session.scalars(select(InboundRecord.id).where(InboundRecord.status != "answered")).all()
    assert len(rolled) == 1 and rolled[0].conversation_id == on_canary[MIN_REQUESTS - 1]
    assert {k: rolled[0].detail[k] for k in ("model", "by", "answers", "errors", "rate", "previous")} == {
        "model": "broken-canary", "by": "auto", "answers": MIN_REQUESTS, "errors": MIN_REQUESTS, "rate": 1.0,
        "previous": "active"}
    assert len(failures) == MIN_REQUESTS and {f["model"] for f in failures} == {"broken-canary"}
    assert unanswered == []

    seen = status(stack)
    assert (seen["state"], seen["by"], seen["share"]["canary"]) == ("rolled_back", "auto", 0.0)
    assert seen["window"]["canary"] == {"answers": MIN_REQUESTS, "errors": MIN_REQUESTS, "error_rate": 1.0}
    assert seen["window"]["primary"]["answers"] == len(first) - MIN_REQUESTS

    page = scrape(f"http://127.0.0.1:{stack.settings.worker_metrics_port}/metrics")
    assert page.value("kefu_canary_rollbacks_total", model="broken-canary") == 1
    assert page.value("kefu_model_share", model="broken-canary", arm="canary") == 0.0
    assert page.value("kefu_model_share", model="tiny-qwen3", arm="primary") == 1.0
    assert page.value("kefu_model_outcomes_total", model="broken-canary", arm="canary", outcome="error") == MIN_REQUESTS

    for c in failed:  # the conversations that were on the canary: their next message is the primary's
        visitor_id, token = next(v for v in visitors if v[0] == first[c][0])
        conversation, source, model = reply_of(stack, ask(stack, token, visitor_id, "还在吗？"))
        assert (conversation, source, model) == (c, "model", "tiny-qwen3")

    out = io.StringIO()
    assert model_command.run(stack.settings, "compare", as_json=True, out=out) == 0
    lines = {line["model"]: line for line in json.loads(out.getvalue())["models"]}
    assert lines["broken-canary"]["answers"] == MIN_REQUESTS and lines["broken-canary"]["fallback_rate"] == 1.0
    assert lines["tiny-qwen3"]["fallback_rate"] == 0.0
    assert lines["tiny-qwen3"]["conversations"] == len(first)  # the moved-back ones count for both


@pytest.fixture(scope="module")
def healthy_canary(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OpenAIServer]]:
    """The canary is an OpenAI-compatible upstream that works (llama-cpp-python's own server on the tiny GGUF), its
    key given in KEFU_CANARY_API_KEY; embedded stores."""
    data_dir = tmp_path_factory.mktemp("canary-upstream")
    with OpenAIServer(tiny_gguf, data_dir / "server.log", alias="canary-upstream") as server:
        backend = json.dumps({"kind": "openai", "urls": [server.url], "model": server.alias})
        with closing(start_stack("embedded", data_dir, tiny_gguf, None, None, canary_backend=backend,
                                 canary_share=0.5, canary_api_key=server.api_key, canary_min_requests=MIN_REQUESTS,
                                 worker_metrics_port=free_port(), rate_limit_ip="", rate_limit_visitor="")) as stack:
            yield stack, server


def test_a_working_canary_keeps_its_share_and_each_conversation_its_model(
        healthy_canary: tuple[Stack, OpenAIServer]) -> None:
    stack, server = healthy_canary
    canary = gray_release.canary_of(stack.settings)
    assert canary is not None and canary.name == "canary-upstream"
    visitors = [stack.visitor() for _ in range(16)]  # both models get some: P(not) = 2^-15
    models: dict[int, list[tuple[str, str | None]]] = {}
    for text in ("你好，请问怎么退货？", "运费谁出？"):
        for visitor_id, token in visitors:
            conversation, source, model = reply_of(stack, ask(stack, token, visitor_id, text))
            models.setdefault(conversation, []).append((source, model))
    expected = {c: "canary-upstream" if gray_release.on_canary(canary.id, c, 0.5) else "tiny-qwen3" for c in models}
    assert set(expected.values()) == {"canary-upstream", "tiny-qwen3"}, "both models should have conversations"
    assert models == {c: [("model", expected[c])] * 2 for c in models}  # the same model for both messages
    answered_by_canary = 2 * sum(1 for m in expected.values() if m == "canary-upstream")

    seen = status(stack)
    assert (seen["state"], seen["share"]["canary"]) == ("active", 0.5)
    assert seen["window"]["canary"] == {"answers": answered_by_canary, "errors": 0, "error_rate": 0.0}
    assert "api_key" not in json.dumps(seen) and server.api_key not in json.dumps(seen)
    with stack.sessions() as session:
        assert session.scalars(select(AuditEvent).where(AuditEvent.kind == "model_rolled_back")).all() == []
    page = scrape(f"http://127.0.0.1:{stack.settings.worker_metrics_port}/metrics")
    assert page.value("kefu_model_outcomes_total", model="canary-upstream", arm="canary",
                      outcome="ok") == answered_by_canary
    assert page.value("kefu_model_share", model="canary-upstream", arm="canary") == 0.5

    out = io.StringIO()
    assert model_command.run(stack.settings, "compare", as_json=True, out=out) == 0
    lines = {line["model"]: line for line in json.loads(out.getvalue())["models"]}
    assert lines["canary-upstream"]["answers"] == answered_by_canary
    assert lines["tiny-qwen3"]["answers"] == 2 * len(models) - answered_by_canary
    assert lines["canary-upstream"]["latency_p50_ms"] is not None

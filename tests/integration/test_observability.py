"""Readiness, status and logs of real processes: ``kefu worker`` (llama.cpp on the tiny GGUF) and ``kefu gateway`` as
children, on both backend sets (embedded: the heartbeat goes through the SQLite KV file the processes share; Redis +
PostgreSQL: through Redis).

- ``/readyz`` is 503 naming ``llm_worker`` before a worker runs, 200 once a warm one beats its heartbeat, and 503
  again as soon as that worker stops (it deletes its key); a worker without ``--warm`` is alive but not ready
  (``llm_model``) until its first message loads the model.
- ``kefu status`` says the same, with exit code 0 or 1.
- ``KEFU_LOG_FORMAT=json``: the gateway's access line for a request carries the caller's X-Request-ID (echoed in the
  response), never its query string; the worker's lines about a message carry its conversation id.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from models.infra.db import make_engine, make_session_factory
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import InboundRecord
from tests.conftest import REPO, as_env, settings_kwargs
from tests.integration.conftest import BACKENDS, wait_for
from tests.metrics_scrape import scrape
from tests.stack import GatewayProcess
from workers.demo.processes import WorkerProcess, free_port


@pytest.fixture(params=BACKENDS)
def values(request: pytest.FixtureRequest, tmp_path: Path, tiny_gguf: Path) -> dict[str, Any]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    found = settings_kwargs(backend, tmp_path, tiny_gguf, pg, rds) | {"log_format": "json"}
    upgrade(Settings(**found))
    return found


@pytest.fixture
def gateway(values: dict[str, Any], tmp_path: Path) -> Iterator[GatewayProcess]:
    started = GatewayProcess(as_env(values), tmp_path / "gateway.log").start()
    try:
        yield started
    finally:
        started.stop()


def readyz(gateway: GatewayProcess) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{gateway.http_url}/readyz", timeout=20)
    return answer.status_code, answer.json()


def status(values: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "workers.cli", "status", "--json"], env=as_env(values),
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    return done.returncode, json.loads(done.stdout)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The log's JSON lines (Celery prints its start-up banner on stdout, outside logging)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def start_worker(values: dict[str, Any], tmp_path: Path, *, warm: bool) -> WorkerProcess:
    worker = WorkerProcess(as_env(values), tmp_path / "worker.log", warm=warm)
    assert worker.wait(timeout=120), (tmp_path / "worker.log").read_text()[-3000:]
    return worker


def test_readiness_follows_a_warm_worker_and_logs_carry_the_ids(values: dict[str, Any], gateway: GatewayProcess,
                                                                 tmp_path: Path) -> None:
    code, body = readyz(gateway)
    assert (code, body["missing"], body["checks"]["llm_worker"]) == (503, ["llm_worker"], "none alive")
    assert status(values)[0] == 1

    port = free_port()
    worker = start_worker(values | {"worker_metrics_port": port}, tmp_path, warm=True)
    try:
        code, body = wait_for(lambda: (got := readyz(gateway))[0] == 200 and got, timeout=30)
        (alive,) = body["llm_workers"]
        assert alive == {"node": f"llm-io@{socket.gethostname()}", "model": Path(values["model_path"]).stem,
                         "loaded": True}
        code, found = status(values)
        assert code == 0 and found["missing"] == [] and found["llm_workers"][0]["slots"] == Settings().n_slots

        with httpx.Client(base_url=gateway.http_url, timeout=20) as http:
            session = http.post("/v1/web/sessions?secret=do-not-log-me").json()
            answer = http.post("/v1/web/messages", headers={"Authorization": f"Bearer {session['token']}",
                                                            "X-Request-ID": "trace-42"},
                               json={"visitor_id": session["visitor_id"], "text": "你好，我的订单什么时候发货？"})
        assert answer.status_code == 202 and answer.headers["x-request-id"] == "trace-42"
        engine = make_engine(Settings(**values))
        try:
            with make_session_factory(engine)() as s:
                conversation = s.scalar(select(InboundRecord.conversation_id).where(
                    InboundRecord.id == answer.json()["message_id"]))
        finally:
            engine.dispose()
        assert conversation is not None
        wait_for(lambda: any(line.get("conversation_id") == str(conversation) and "succeeded" in line["message"]
                             for line in json_lines(tmp_path / "worker.log")), timeout=60)
        page = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        worker.stop()
    assert page.value("kefu_kv_cells") == Settings().n_slots * values["n_ctx"]
    assert 0 <= page.value("kefu_kv_cells_used") <= page.value("kefu_kv_cells")
    code, body = readyz(gateway)  # the worker deleted its heartbeat as it stopped: no wait for the TTL
    assert (code, body["missing"]) == (503, ["llm_worker"])

    gateway_lines = json_lines(tmp_path / "gateway.log")
    access = [line for line in gateway_lines if line["logger"] == "kefu.access"]
    (message,) = [line for line in access if line.get("request_id") == "trace-42"]
    assert message["message"].startswith("POST /v1/web/messages 202 ") and message["level"] == "INFO"
    assert any(line["message"].startswith("POST /v1/web/sessions 201 ") for line in access)
    assert "do-not-log-me" not in (tmp_path / "gateway.log").read_text()
    assert {"time", "level", "logger", "message"} <= set(message)


def test_a_cold_worker_is_alive_but_not_ready_until_its_model_loads(values: dict[str, Any],
                                                                    gateway: GatewayProcess, tmp_path: Path) -> None:
    worker = start_worker(values, tmp_path, warm=False)
    try:
        code, body = wait_for(lambda: (got := readyz(gateway))[1]["llm_workers"] and got, timeout=30)
        assert (code, body["missing"]) == (503, ["llm_model"])
        assert body["llm_workers"][0]["loaded"] is False
        with httpx.Client(base_url=gateway.http_url, timeout=20) as http:
            session = http.post("/v1/web/sessions").json()
            http.post("/v1/web/messages", headers={"Authorization": f"Bearer {session['token']}"},
                      json={"visitor_id": session["visitor_id"], "text": "请问怎么退货？"})
        code, body = wait_for(lambda: (got := readyz(gateway))[0] == 200 and got, timeout=120)
        assert body["llm_workers"][0]["loaded"] is True
    finally:
        worker.stop()

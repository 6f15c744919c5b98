"""/metrics scraped from real processes, parsed with prometheus_client's own parser.

- ``kefu gateway --workers 2`` (multiprocess mode): every web message counted once whichever process took it, a
  platform-style retry not counted again, each acknowledgement timed; the metrics directory is emptied at start.
- A real ``kefu worker`` with ``KEFU_WORKER_METRICS_PORT``: a web chat message answered by llama.cpp moves the
  queue-wait, first-token, generation and delivery histograms, the tokens counter, the answered-messages counter
  (channel, intent, outcome) and the model and slot gauges; the in-thread gateway's /metrics counts its arrival.
- ``deliver`` run in this process: the delivery histogram times the send, not the database work that follows it.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from channels.ingress import Ingress
from models import audit
from models.envelope import ConversationKey, Inbound
from models.infra.migrate import upgrade
from models.replies import Answer, reply_id_of
from models.settings import Settings
from models.states import ReplySource
from tests.conftest import as_env, settings_kwargs
from tests.integration.conftest import recv_until, start_stack, wait_for
from tests.metrics_scrape import Scrape, scrape
from tests.stack import GatewayProcess
from workers import runtime as worker_runtime
from workers import tasks
from workers.demo.processes import WorkerProcess, free_port

ROUTE = "/v1/web/messages"


def test_a_multiprocess_gateway_counts_each_message_once(tmp_path: Path, tiny_gguf: Path) -> None:
    values = settings_kwargs("embedded", tmp_path, tiny_gguf, None, None)
    upgrade(Settings(**values))
    port = free_port()
    stale = tmp_path / "metrics" / f"gateway-{port}" / "counter_999999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier run")
    gateway = GatewayProcess(as_env(values), tmp_path / "gateway.log", port=port, workers=2).start()
    try:
        with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
            visitor = http.post("/v1/web/sessions").json()
            auth = {"Authorization": f"Bearer {visitor['token']}"}
            ids = [uuid.uuid4().hex for _ in range(6)]
            for number, client_msg_id in enumerate([*ids, ids[0]]):  # the last one is a retry of the first
                r = http.post(ROUTE, headers=auth, json={"visitor_id": visitor["visitor_id"],
                                                         "text": f"请问第{number}个订单什么时候发货？",
                                                         "client_msg_id": client_msg_id})
                assert r.status_code in (200, 202), r.text
        page = scrape(f"{gateway.http_url}/metrics")
    finally:
        gateway.stop()
    assert not stale.exists(), "the metrics directory was not emptied at start"
    assert page.types["kefu_messages_received"] == "counter"
    assert page.types["kefu_ack_seconds"] == "histogram"
    assert page.value("kefu_messages_received_total", channel="web") == 6
    assert page.value("kefu_ack_seconds_count", channel="web", route=ROUTE, method="POST") == 7
    assert page.value("kefu_ack_seconds_bucket", channel="web", route=ROUTE, method="POST", le="+Inf") == 7
    assert page.value("kefu_ack_seconds_sum", channel="web", route=ROUTE, method="POST") > 0
    assert page.value("kefu_ack_seconds_count", channel="web", route="/v1/web/sessions", method="POST") == 1
    files = list((tmp_path / "metrics" / f"gateway-{port}").glob("*.db"))
    assert files, "no multiprocess files: the gateway did not run in multiprocess mode"


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def test_a_worker_serves_its_metrics_and_they_move(tmp_path: Path, tiny_gguf: Path) -> None:
    port = free_port()
    stack = start_stack("embedded", tmp_path, tiny_gguf, None, None, worker_metrics_port=port)
    worker_url, gateway_url = f"http://127.0.0.1:{port}/metrics", f"{stack.gateway.http_url}/metrics"
    try:
        worker_before, gateway_before = scrape(worker_url), scrape(gateway_url)
        assert worker_before.value("kefu_model_loaded") == 1  # --warm: loaded before the worker said ready
        assert worker_before.value("kefu_slots") == stack.settings.n_slots
        _, token = stack.visitor()
        with stack.ws(token) as ws:
            ws.send(json.dumps({"type": "message", "text": "你好，我的订单什么时候发货？", "client_msg_id": "m1"}))
            reply = recv_until(ws, lambda f: f["type"] == "reply")[-1]
            ws.send(json.dumps({"type": "ack", "reply_id": reply["reply_id"]}))
        after = wait_for(lambda: (page := scrape(worker_url)).value("kefu_delivery_seconds_count", channel="web")
                         > worker_before.value("kefu_delivery_seconds_count", channel="web") and page, timeout=30)
        gateway_after = scrape(gateway_url)
    finally:
        stack.close()
    assert moved(gateway_before, gateway_after, "kefu_messages_received_total", channel="web") == 1
    assert moved(gateway_before, gateway_after, "kefu_ack_seconds_count", channel="web", route="/v1/web/ws",
                 method="WS") == 1  # the message frame's accepted frame; the ack frame answers nothing
    assert moved(worker_before, after, "kefu_messages_total", channel="web", outcome="model") == 1
    assert moved(worker_before, after, "kefu_queue_wait_seconds_count", channel="web") == 1
    assert moved(worker_before, after, "kefu_first_token_seconds_count", channel="web") == 1
    assert moved(worker_before, after, "kefu_generation_seconds_count", channel="web") == 1
    assert moved(worker_before, after, "kefu_generation_seconds_sum", channel="web") > 0
    assert moved(worker_before, after, "kefu_tokens_generated_total") > 0
    assert moved(worker_before, after, "kefu_delivery_failures_total") == 0
    assert after.types["kefu_slots_busy"] == "gauge" and after.value("kefu_slots_busy") == 0  # idle again
    intents = {labels["intent"] for name, labels, _ in after.samples if name == "kefu_messages_total"}
    assert intents and "" not in intents  # an intent label, or "none"; never empty


def test_a_prefork_worker_adds_up_its_children(tmp_path: Path, tiny_gguf: Path) -> None:
    """Two prefork children with a model each: one page says 2 (livesum over the worker's processes); once they shut
    down their live gauges are gone."""
    port = free_port()
    values = settings_kwargs("embedded", tmp_path, tiny_gguf, None, None) | {"engine": "simple",
                                                                             "worker_metrics_port": port}
    upgrade(Settings(**values))
    directory = tmp_path / "metrics" / f"worker-{port}"
    worker = WorkerProcess(as_env(values), tmp_path / "worker.log", queues="llm",
                           extra=["--pool", "prefork", "--concurrency", "2"])
    try:
        assert worker.wait(timeout=120), (tmp_path / "worker.log").read_text()[-3000:]
        page = wait_for(lambda: (got := scrape(f"http://127.0.0.1:{port}/metrics")).value("kefu_model_loaded") == 2
                        and got, timeout=60)
        live = list(directory.glob("gauge_livesum_*.db"))
    finally:
        worker.stop()
    assert page.types["kefu_model_loaded"] == "gauge"
    assert len(live) >= 3, "the main process and both children should each have written their own file"
    assert not list(directory.glob("gauge_livesum_*.db")), "a process that shut down still counts in the gauges"


def test_delivery_seconds_time_the_send_not_the_bookkeeping(tmp_path: Path, tiny_gguf: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """kefu_delivery_seconds is the send through the channel; recording the delivery as sent afterwards (here made
    slow on purpose) is not part of it."""
    settings = Settings(**settings_kwargs("embedded", tmp_path, tiny_gguf, None, None))
    upgrade(settings)
    worker_runtime.configure(settings)
    try:
        rt = worker_runtime.runtime()
        key = ConversationKey("web", settings.web_account, f"v-{uuid.uuid4().hex[:8]}")
        accepted, _ = Ingress(rt.sessions, rt.publisher).accept_answered(
            Inbound(key, uuid.uuid4().hex, "你好"), Answer("您好！", ReplySource.WELCOME), passive=False)
        with rt.sessions() as session:
            reply_id = reply_id_of(session, accepted.inbound_id)
        assert reply_id is not None
        record = audit.record

        def slow_record(session: Any, kind: str, **detail: Any) -> Any:
            if kind == audit.DISPATCHED:
                time.sleep(0.5)
            return record(session, kind, **detail)

        monkeypatch.setattr(tasks.audit, "record", slow_record)
        labels = {"channel": "web"}
        before = [REGISTRY.get_sample_value(f"kefu_delivery_seconds_{part}", labels) or 0.0 for part in ("count", "sum")]
        assert tasks.deliver(SimpleNamespace(request=SimpleNamespace(retries=0)), reply_id) == "sent"
        count, total = (REGISTRY.get_sample_value(f"kefu_delivery_seconds_{part}", labels) or 0.0
                        for part in ("count", "sum"))
    finally:
        worker_runtime.shutdown()
    assert count == before[0] + 1
    assert total - before[1] < 0.5, "the database work after the send was timed as the send"

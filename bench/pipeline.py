"""Broker and pipeline overhead, with a model that costs almost nothing.

For each backend (Redis + PostgreSQL, and the embedded SQLite queue + SQLite database) this starts
a real `kefu gateway` process and a real `kefu worker` process with a tiny
random-weight Qwen3 GGUF (max 8 tokens), then runs visitors that each keep a WebSocket open and
send messages with ``POST /v1/web/messages``. It reports p50/p95/p99 of:

- ack:           POST sent → 202 received (the gateway's acknowledgement; client-side clock)
- queue→worker:  audit ``received`` → ``generation_started`` (gateway accepted → worker started on it)
- accept→ws:     202 received → the reply frame arriving on the visitor's WebSocket

Usage: python -m bench.pipeline [--backends redis,embedded] [--concurrency 1,50] [--messages 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from websockets.sync.client import connect

from bench.stats import pct
from models.infra.db import make_engine, make_session_factory
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import AuditEvent
from tests import services
from tests.stack import GatewayProcess, kefu_env
from tests.synthetic_gguf import write_qwen3_gguf
from workers.demo.processes import WorkerProcess


@dataclass
class Sample:
    message_id: int
    ack_s: float
    accept_to_ws_s: float


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[str] = field(default_factory=list)


def visitor(gw: GatewayProcess, messages: int, run: Run, start: threading.Barrier) -> None:
    try:
        with httpx.Client(base_url=gw.http_url, timeout=30) as http:
            session = http.post("/v1/web/sessions").json()
            auth = {"Authorization": f"Bearer {session['token']}"}
            with connect(f"{gw.ws_url}/v1/web/ws?token={session['token']}", open_timeout=30) as ws:
                start.wait()
                for n in range(messages):
                    t0 = time.perf_counter()
                    r = http.post("/v1/web/messages", headers=auth,
                                  json={"visitor_id": session["visitor_id"], "text": f"第{n}个问题：什么时候发货？"})
                    t1 = time.perf_counter()
                    r.raise_for_status()
                    message_id = r.json()["message_id"]
                    while True:
                        frame = json.loads(ws.recv(timeout=120))
                        if frame["type"] == "reply" and frame["message_id"] == message_id:
                            t2 = time.perf_counter()
                            ws.send(json.dumps({"type": "ack", "reply_id": frame["reply_id"]}))
                            break
                    with run.lock:
                        run.samples.append(Sample(message_id, t1 - t0, t2 - t1))
    except Exception as exc:  # reported, never hidden
        with run.lock:
            run.errors.append(f"{type(exc).__name__}: {exc}")


def queue_delays(settings: Settings, ids: list[int]) -> list[float]:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(
                select(AuditEvent.inbound_id, AuditEvent.kind, AuditEvent.at)
                .where(AuditEvent.inbound_id.in_(ids), AuditEvent.kind.in_(("received", "generation_started")))
            ).all()
    finally:
        engine.dispose()
    at: dict[tuple[int, str], Any] = {(r[0], r[1]): r[2] for r in rows}
    return [(at[(i, "generation_started")] - at[(i, "received")]).total_seconds()
            for i in ids if (i, "generation_started") in at and (i, "received") in at]


def bench_backend(backend: str, levels: list[int], total: int, model: Path, workdir: Path) -> list[dict[str, Any]]:
    data_dir = workdir / backend
    values: dict[str, Any] = {"data_dir": str(data_dir), "model_path": str(model), "max_tokens": 8, "n_ctx": 1024,
                              "temperature": 0.0, "secret_key": "bench", "log_level": "INFO"}
    db_name = None
    if backend == "redis":
        services.ensure_postgres()
        services.ensure_redis()
        db_name, url = services.create_database()
        values.update(database_url=url, broker_url=services.redis_db_url(15))
    settings = Settings(**values)
    upgrade(settings)
    env = kefu_env(values)
    worker = WorkerProcess(env, data_dir / "worker.log", extra=["--concurrency", "8"])
    gateway = GatewayProcess(env, data_dir / "gateway.log").start()
    results = []
    try:
        if not worker.wait(120):
            raise RuntimeError(f"worker did not start: {(data_dir / 'worker.log').read_text()[-2000:]}")
        for concurrency in levels:
            per_visitor = max(1, total // concurrency)
            run = Run()
            barrier = threading.Barrier(concurrency)
            threads = [threading.Thread(target=visitor, args=(gateway, per_visitor, run, barrier))
                       for _ in range(concurrency)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
            queue = queue_delays(settings, [s.message_id for s in run.samples])
            acks = [s.ack_s for s in run.samples]
            e2e = [s.accept_to_ws_s for s in run.samples]
            row = {
                "backend": "Redis + PostgreSQL" if backend == "redis" else "embedded (SQLite queue + SQLite)",
                "concurrency": concurrency, "messages": len(run.samples), "errors": len(run.errors),
                "throughput_msg_s": round(len(run.samples) / wall, 1),
                **{f"ack_p{p}_ms": round(pct(acks, p), 1) for p in (50, 95, 99)},
                **{f"queue_p{p}_ms": round(pct(queue, p), 1) for p in (50, 95, 99)},
                **{f"ws_p{p}_ms": round(pct(e2e, p), 1) for p in (50, 95, 99)},
            }
            if run.errors:
                row["first_error"] = run.errors[0]
            print(json.dumps(row, ensure_ascii=False), flush=True)
            results.append(row)
    finally:
        gateway.stop()
        worker.stop()
        if db_name:
            services.drop_database(db_name)
    return results


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| backend | visitors | msgs | msg/s | ack p50/p95/p99 ms | accepted→worker p50/p95/p99 ms "
            "| accepted→WebSocket p50/p95/p99 ms |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['concurrency']} | {r['messages']} | {r['throughput_msg_s']} "
            f"| {r['ack_p50_ms']} / {r['ack_p95_ms']} / {r['ack_p99_ms']} "
            f"| {r['queue_p50_ms']} / {r['queue_p95_ms']} / {r['queue_p99_ms']} "
            f"| {r['ws_p50_ms']} / {r['ws_p95_ms']} / {r['ws_p99_ms']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="redis,embedded")
    parser.add_argument("--concurrency", default="1,50")
    parser.add_argument("--messages", type=int, default=200, help="messages per concurrency level")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="kefu-bench-") as tmp:
        workdir = Path(tmp)
        model = write_qwen3_gguf(workdir / "tiny-qwen3.gguf")
        rows: list[dict[str, Any]] = []
        for backend in args.backends.split(","):
            rows += bench_backend(backend.strip(), levels, args.messages, model, workdir)
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(table(rows))


if __name__ == "__main__":
    main()

"""WeChat callback acknowledgement under load, with the model queue saturated.

Starts a loopback WeChat API server, a real `kefu gateway` process on Redis + PostgreSQL, and no
worker: every accepted message piles up in the `llm` queue, as when the model falls behind. It then
sends signed, AES-encrypted text callbacks at a fixed rate (open loop: each request is due at its own
instant, and latency counts from that instant, so a slow gateway cannot hide its queueing) — 10 % of
them sent twice, as WeChat does when it retries. Afterwards a worker drains the queue and the script
counts, per message, how many customer-service replies the loopback server received.

Usage: python -m bench.wechat_ingress [--rate 200] [--seconds 30] [--drain-timeout 900]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func, select

from bench.stats import pct
from channels.wechat_fake import FakeWeChat
from models.infra.db import make_engine, make_session_factory
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import DeliveryRecord, InboundRecord, ReplyRecord
from tests import services
from tests import wechat_platform as wp
from tests.stack import GatewayProcess, kefu_env
from tests.synthetic_gguf import write_qwen3_gguf
from workers.demo.processes import WorkerProcess


class RawHTTP:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams.

    httpx's async connection pool costs more CPU per request than the gateway does, which made the
    load generator, not Kefu, the bottleneck at a couple of hundred requests per second.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, target: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {target} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: text/xml\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        while True:
            reused = bool(self.idle)
            reader, writer = self.idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
            writer.write(head + body)
            status_line = await reader.readline()
            if status_line:
                break
            writer.close()  # the server closed an idle keep-alive connection: nothing was processed
            if not reused:
                raise ConnectionError("the gateway closed a new connection")
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        self.idle.append((reader, writer))
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def load(port: int, callbacks: list[tuple[float, wp.Callback]]) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    http = RawHTTP("127.0.0.1", port)
    start = time.perf_counter() + 0.5

    async def one(due: float, cb: wp.Callback) -> None:
        await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
        try:
            status, payload = await http.post(f"/v1/wechat/shop?{urlencode(cb.params)}", cb.body)
            outcomes[f"{status} {payload[:20].decode(errors='replace')}"] += 1
        except OSError as exc:
            outcomes[type(exc).__name__] += 1
        latencies.append(time.perf_counter() - (start + due))

    await asyncio.gather(*(one(due, cb) for due, cb in callbacks))
    http.close()
    return latencies, outcomes


def report(settings: Settings, total: int, sends: int) -> None:
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as s:
            inbound = s.scalar(select(func.count()).select_from(InboundRecord)) or 0
            replies = s.scalar(select(func.count()).select_from(ReplyRecord)) or 0
            statuses = dict(s.execute(select(DeliveryRecord.status, func.count()).group_by(DeliveryRecord.status)).all())
            per_inbound = s.execute(select(func.count()).select_from(
                select(ReplyRecord.inbound_id).group_by(ReplyRecord.inbound_id)
                .having(func.count() > 1).subquery())).scalar()
    finally:
        engine.dispose()
    print(f"messages {total}: inbound rows {inbound}, replies {replies} (inbound with >1 reply: {per_inbound}), "
          f"deliveries {statuses}, customer-service messages received by the platform {sends}")
    print(f"answered exactly once: {min(replies, sends) if sends == replies else 'MISMATCH'} of {total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--drain-timeout", type=float, default=900)
    parser.add_argument("--gateway-workers", type=int, default=1, help="kefu gateway --workers")
    args = parser.parse_args()
    services.ensure_postgres()
    services.ensure_redis()
    db_name, db_url = services.create_database()
    broker = services.redis_db_url(15)
    with tempfile.TemporaryDirectory(prefix="kefu-wxbench-") as tmp, FakeWeChat() as fake:
        fake.add_mp_app(wp.APPID, wp.SECRET)
        data_dir = Path(tmp)
        model = write_qwen3_gguf(data_dir / "tiny.gguf")
        values: dict[str, Any] = {
            "data_dir": str(data_dir), "database_url": db_url, "broker_url": broker, "secret_key": "bench",
            "model_path": str(model), "max_tokens": 8, "n_ctx": 1024, "log_level": "WARNING",
            "wechat_accounts": [wp.account()], "wechat_api_base": fake.base_url,
            # accept callbacks whose timestamp was made before the run started
            "wechat_timestamp_window_s": int(args.seconds) + 300,
        }
        settings = Settings(**values)
        upgrade(settings)
        env = kefu_env(values)
        gateway = GatewayProcess(env, data_dir / "gateway.log", workers=args.gateway_workers).start()
        try:
            total = int(args.rate * args.seconds)
            rng = random.Random(7)
            plan: list[tuple[float, wp.Callback]] = []
            for n in range(total):
                xml = wp.text_xml(f"o-bench-{n % 500}", f"第{n}个问题：我的订单什么时候发货？", msgid=10_000_000 + n)
                cb = wp.callback(xml, mode="aes")
                due = n / args.rate
                plan.append((due, cb))
                if rng.random() < 0.10:  # WeChat's retry of the same callback, a little later
                    plan.append((due + rng.uniform(0.05, 1.0), cb))
            plan.sort(key=lambda item: item[0])
            started = time.perf_counter()
            latencies, outcomes = asyncio.run(load(gateway.port, plan))
            elapsed = time.perf_counter() - started
            print(f"sent {len(plan)} callbacks ({total} messages + {len(plan) - total} retries) in {elapsed:.1f}s")
            print("outcomes:", dict(outcomes))
            print(f"ack latency ms: p50 {pct(latencies, 50):.1f}  p95 {pct(latencies, 95):.1f}  "
                  f"p99 {pct(latencies, 99):.1f}  max {max(latencies) * 1000:.1f}")

            if args.drain_timeout <= 0:
                return
            worker = WorkerProcess(env, data_dir / "worker.log", extra=["--concurrency", "8"])
            drain_start = time.perf_counter()
            try:
                while len(fake.sent) < total and time.perf_counter() - drain_start < args.drain_timeout:
                    time.sleep(1)
                time.sleep(3)  # anything sent twice would show up now
            finally:
                worker.stop()
            print(f"drained in {time.perf_counter() - drain_start:.1f}s")
            report(settings, total, len(fake.sent))
        finally:
            gateway.stop()
            services.drop_database(db_name)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")


if __name__ == "__main__":
    main()

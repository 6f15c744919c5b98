"""WeChat callbacks answered from a 2,000-entry FAQ: the acknowledgement's latency at a fixed rate.

Starts a loopback WeChat API server and a real `kefu gateway` process on Redis + PostgreSQL with a 2,000-entry
``KEFU_FAQ`` (given through ``KEFU_FAQ_FILE``): the 200 entries of tests/data/faq/atec_faq_tune.json plus 1,800
variants of their questions. It then sends signed, AES-encrypted text callbacks at ``--rate`` per second, open loop
(each request is due at its own instant; latency counts from it), cycling through the set's 256 real customer
queries: the ones the FAQ answers get a passive reply inside the callback (decide() ran in the gateway), the
others are queued for the model (no worker runs). A few callbacks first warm the gateway up (not counted).

``--no-faq`` runs the same callbacks against the same gateway without the FAQ (every message queued): the
acknowledgement's cost without FAQ decisions, for an A/B on one machine. ``--gateway-workers N`` runs N gateway
processes on the port (``kefu gateway --workers``).

Usage: python -m bench.faq_callbacks [--rate 200] [--seconds 30] [--gateway-workers 1] [--no-faq]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.faq_eval import SETS, load
from bench.stats import pct
from bench.wechat_ingress import RawHTTP
from channels.wechat_fake import FakeWeChat
from models.infra.migrate import upgrade
from models.settings import Settings
from tests import services
from tests import wechat_platform as wp
from tests.stack import GatewayProcess, kefu_env


def faq_file(path: Path) -> int:
    entries, _ = load(SETS[0])
    rows = [{"question": e.question, "similar": list(e.similar), "answer": e.answer} for e in entries]
    rows += [{"question": f"{rows[n % len(rows)]['question']}（型号 {n}）", "answer": f"答案 {n}"}
             for n in range(2000 - len(rows))]
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return len(rows)


async def send(port: int, plan: list[tuple[float, wp.Callback]]) -> dict[str, list[float]]:
    """Latencies by outcome: ``passive`` (a reply inside the callback: an FAQ hit, or another rule such as a
    hand-off), ``queued`` (``success``), or the status/error."""
    http = RawHTTP("127.0.0.1", port)
    by_outcome: dict[str, list[float]] = {}
    start = time.perf_counter() + 0.5

    async def one(due: float, cb: wp.Callback) -> None:
        await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
        try:
            status, payload = await http.post(f"/v1/wechat/shop?{urlencode(cb.params)}", cb.body)
            outcome = "queued" if payload == b"success" else "passive" if status == 200 and payload else f"{status}"
        except OSError as exc:
            outcome = type(exc).__name__
        by_outcome.setdefault(outcome, []).append(time.perf_counter() - (start + due))

    await asyncio.gather(*(one(due, cb) for due, cb in plan))
    http.close()
    return by_outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--gateway-workers", type=int, default=1, help="kefu gateway --workers")
    parser.add_argument("--no-faq", action="store_true", help="the same callbacks without the FAQ (A/B)")
    args = parser.parse_args()
    services.ensure_postgres()
    services.ensure_redis()
    db_name, db_url = services.create_database()
    _, queries = load(SETS[0])
    with tempfile.TemporaryDirectory(prefix="kefu-faqbench-") as tmp, FakeWeChat() as fake:
        fake.add_mp_app(wp.APPID, wp.SECRET)
        data_dir = Path(tmp)
        size = faq_file(data_dir / "faq.json")
        values: dict[str, Any] = {
            "data_dir": str(data_dir), "database_url": db_url, "broker_url": services.redis_db_url(15),
            "secret_key": "bench", "log_level": "WARNING",
            "wechat_accounts": [wp.account()], "wechat_api_base": fake.base_url,
            "wechat_timestamp_window_s": int(args.seconds) + 300,
        }
        if not args.no_faq:
            values["faq_file"] = str(data_dir / "faq.json")
        upgrade(Settings(**{k: v for k, v in values.items() if k != "faq_file"}))
        gateway = GatewayProcess(kefu_env(values), data_dir / "gateway.log", workers=args.gateway_workers).start()
        try:
            warm = [(n * 0.5, wp.callback(wp.text_xml("o-warm", queries[n][0], msgid=9_000_000 + n), mode="aes"))
                    for n in range(6)]
            print("warm-up:", {k: len(v) for k, v in asyncio.run(send(gateway.port, warm)).items()})
            total = int(args.rate * args.seconds)
            plan = [(n / args.rate, wp.callback(wp.text_xml(f"o-bench-{n % 500}", queries[n % len(queries)][0],
                                                            msgid=10_000_000 + n), mode="aes")) for n in range(total)]
            started = time.perf_counter()
            by_outcome = asyncio.run(send(gateway.port, plan))
            print(f"{0 if args.no_faq else size}-entry FAQ, {args.gateway_workers} gateway process(es); "
                  f"sent {total} callbacks at {args.rate:g}/s in {time.perf_counter() - started:.1f}s")
            everything = [t for times in by_outcome.values() for t in times]
            for name, times in sorted(Counter({k: len(v) for k, v in by_outcome.items()}).items()):
                t = by_outcome[name]
                print(f"  {name}: {times} — ack ms p50 {pct(t, 50):.1f}  p99 {pct(t, 99):.1f}  max {max(t) * 1e3:.1f}")
            print(f"  all: ack ms p50 {pct(everything, 50):.1f}  p95 {pct(everything, 95):.1f}  "
                  f"p99 {pct(everything, 99):.1f}  max {max(everything) * 1e3:.1f}")
        finally:
            gateway.stop()
            services.drop_database(db_name)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")


if __name__ == "__main__":
    main()

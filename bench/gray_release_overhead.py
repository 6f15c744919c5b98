"""What the gray release costs one model answer: reading the state, counting the outcome, judging the canary.

    .venv/bin/python bench/gray_release_overhead.py [--answers N] [--redis redis://127.0.0.1:6379/15]

For each KV store (Redis at ``--redis``, a database that is flushed before and after; the embedded SQLite file in a
temporary directory) and each kind of answer — a primary answer, a canary answer that went well, a canary error
(which reads the canary's window: 22 counters) — prints the mean milliseconds of ``arm()`` plus ``record()`` over N
answers (after one warm-up). The canary is never taken out here (``KEFU_CANARY_MIN_REQUESTS`` is huge) and no
audit row is written, so no database is needed. Run it on a quiet machine; the figures go in docs/gray-release.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from models.infra.kv import KV, RedisKV, SQLiteKV
from models.settings import Settings
from workers.gray_release import CANARY, ERROR, OK, PRIMARY, GrayRelease, canary_of


def measure(kv: KV, settings: Settings, answers: int) -> dict[str, float]:
    canary = canary_of(settings)
    assert canary is not None
    gray = GrayRelease(settings, kv, None, canary, lambda: None, "primary")  # type: ignore[arg-type, return-value]
    found = {}
    for label, arm, outcome in (("primary answer", PRIMARY, OK), ("canary answer, ok", CANARY, OK),
                                ("canary answer, error", CANARY, ERROR)):
        gray.arm(0)
        gray.record(arm, outcome, 0)
        started = time.perf_counter()
        for n in range(answers):
            gray.arm(n)
            gray.record(arm, outcome, n)
        found[label] = (time.perf_counter() - started) / answers * 1000
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=2000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kefu-gray-") as tmp:
        model = Path(tmp) / "canary.gguf"
        model.write_bytes(b"never loaded")
        settings = Settings(data_dir=Path(tmp), canary_backend=str(model), canary_min_requests=10**9)
        client: Any = redis.Redis.from_url(args.redis)
        client.flushdb()
        try:
            stores: list[tuple[str, KV]] = [("redis", RedisKV(args.redis, 5)), ("sqlite", SQLiteKV(Path(tmp) / "kv"))]
            for name, kv in stores:
                for label, ms in measure(kv, settings, args.answers).items():
                    print(f"{name:>6}  {label:<22} {ms:6.2f} ms per answer")
        finally:
            client.flushdb()
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

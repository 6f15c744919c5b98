"""What a metric costs the process that records it: one counter increment, one histogram observation, one scrape.

    .venv/bin/python bench/metrics_cost.py [--calls N]

Runs itself twice in child processes, because prometheus_client chooses its mode at import: ``memory`` (values in
the process, as in ``kefu demo`` and the tests) and ``multiprocess`` (memory-mapped files under a fresh
``KEFU_DATA_DIR/metrics/<group>``, as ``kefu gateway`` and ``kefu worker`` with a metrics port run). Prints
microseconds per call (the mean over N calls after one warm-up) and milliseconds per exposition of one process's
values (the mean of 100).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(mode: str, calls: int, data_dir: Path) -> None:
    if mode == "multiprocess":
        from models.infra import metrics_dir
        from models.settings import Settings

        metrics_dir.prepare(Settings(data_dir=data_dir), "bench")
    from models.infra import metrics

    for name, call in (("counter inc      (kefu_messages_total)", lambda: metrics.answered("web", "shipping", "model")),
                       ("histogram observe (kefu_ack_seconds)  ",
                        lambda: metrics.acked("web", "/v1/web/messages", "POST", 0.004))):
        call()
        started = time.perf_counter()
        for _ in range(calls):
            call()
        print(f"{mode:>12}  {name}  {(time.perf_counter() - started) / calls * 1e6:6.2f} µs/call")
    started = time.perf_counter()
    for _ in range(100):
        body, _ = metrics.exposition()
    print(f"{mode:>12}  exposition of one process's values    {(time.perf_counter() - started) / 100 * 1e3:6.2f} "
          f"ms/scrape ({len(body)} bytes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--mode", choices=["memory", "multiprocess"], help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args()
    if args.mode:
        with tempfile.TemporaryDirectory(prefix="kefu-metrics-") as data_dir:
            measure(args.mode, args.calls, Path(data_dir))
        return 0
    for mode in ("memory", "multiprocess"):
        subprocess.run([sys.executable, __file__, "--mode", mode, "--calls", str(args.calls)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

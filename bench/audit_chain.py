"""Audit write throughput on PostgreSQL with the hash chain (migration 0005) and without it (0004).

Each writer is a process of its own with its own connection, committing transactions of
``--rows-per-tx`` ``models.audit.record`` calls (ingress writes one audit row per transaction, a
finished generation three) as fast as it can for ``--seconds``. Every configuration gets a fresh
database. Then, on one more database: how long migration 0005 takes to seal ``--seal-rows`` existing
rows, and how fast ``kefu audit verify`` walks them.

``--server-side N`` also times N rows inserted by a loop inside PostgreSQL, ``--rows-per-tx`` to a
transaction: the database's own cost per row; ``--writers ''`` skips the client-side runs.

Configurations alternate (without, with, without, with, …) for ``--rounds`` rounds and each figure is
the median, because a shared machine drifts. ``--no-fsync`` sets ``synchronous_commit = off`` in
the writers, taking the commit's disk flush out so what is left is the database's CPU work per row.

Usage: python -m bench.audit_chain [--writers 1,4,16] [--seconds 10] [--rows-per-tx 1] [--rounds 3] [--no-fsync]
                                   [--server-side 20000] [--seal-rows 200000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy import event, text

from bench.stats import pct
from models import audit
from models.audit_verify import verify
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.settings import Settings
from tests import services


def _writer(url: str, data_dir: str, seconds: float, rows_per_tx: int, start_at: float, no_fsync: bool,
            out: multiprocessing.Queue) -> None:
    engine = make_engine(Settings(database_url=url, data_dir=Path(data_dir)))
    if no_fsync:
        event.listen(engine, "connect", lambda dbapi_conn, _: dbapi_conn.execute("SET synchronous_commit = off"))
    sessions = make_session_factory(engine)
    latencies: list[float] = []
    conversation = os.getpid() * 1000
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.perf_counter()
        conversation += 1
        with transaction(sessions) as session:
            for step in range(rows_per_tx):
                audit.record(session, audit.RECEIVED, channel="web", conversation_id=conversation,
                             inbound_id=conversation, step=step, chars=42)
        latencies.append(time.perf_counter() - began)
    engine.dispose()
    out.put(latencies)


def run(revision: str, writers: int, seconds: float, rows_per_tx: int, no_fsync: bool) -> tuple[float, float, float]:
    """(rows per second, p50 ms, p99 ms per transaction) for one configuration on a fresh database."""
    name, url = services.create_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            upgrade(Settings(database_url=url, data_dir=Path(tmp)), revision)
            out: multiprocessing.Queue = multiprocessing.Queue()
            start_at = time.time() + 1.0  # every writer connected before the clock starts
            procs = [multiprocessing.Process(target=_writer, args=(url, tmp, seconds, rows_per_tx, start_at, no_fsync, out))
                     for _ in range(writers)]
            for proc in procs:
                proc.start()
            latencies = [lat for _ in procs for lat in out.get()]
            for proc in procs:
                proc.join()
    finally:
        services.drop_database(name)
    return len(latencies) * rows_per_tx / seconds, pct(latencies, 50), pct(latencies, 99)


def server_side(revision: str, rows: int, rows_per_tx: int) -> float:
    """Seconds for ``rows`` audit rows inserted by a loop inside PostgreSQL (no client, no flush), committed every
    ``rows_per_tx`` rows: the database's own cost of an audit row, with the chain trigger (0005) or without (0004)."""
    name, url = services.create_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            upgrade(Settings(database_url=url, data_dir=Path(tmp)), revision)
        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute("SET synchronous_commit = off")
            began = time.perf_counter()
            conn.execute(f"""DO $$ BEGIN FOR i IN 1..{int(rows)} LOOP
                INSERT INTO audit_event (at, kind, channel, conversation_id, inbound_id, detail)
                VALUES (now(), 'received', 'web', i, i, '{{"chars": 42}}');
                IF i % {int(rows_per_tx)} = 0 THEN COMMIT; END IF; END LOOP; END $$""")
            return time.perf_counter() - began
    finally:
        services.drop_database(name)


def seal_and_verify(rows: int) -> tuple[float, float, int]:
    """(seconds to migrate 0004 -> 0005 over ``rows`` existing rows, seconds to verify them, rows verified)."""
    name, url = services.create_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(database_url=url, data_dir=Path(tmp))
            upgrade(settings, "0004")
            engine = make_engine(settings)
            with engine.begin() as conn:
                conn.execute(text("SET LOCAL statement_timeout = 0"))
                conn.execute(text(
                    "INSERT INTO audit_event (at, kind, channel, conversation_id, inbound_id, detail) "
                    "SELECT now(), 'received', 'web', i, i, json_build_object('chars', i % 500, 'step', 0) "
                    "FROM generate_series(1, :n) AS i"), {"n": rows})
            began = time.monotonic()
            upgrade(settings, "0005")
            sealed = time.monotonic() - began
            report = verify(engine)
            assert report.clean, report.findings
            engine.dispose()
    finally:
        services.drop_database(name)
    return sealed, report.seconds, report.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rows-per-tx", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-fsync", action="store_true", help="synchronous_commit = off in the writers")
    parser.add_argument("--seal-rows", type=int, default=200_000)
    parser.add_argument("--server-side", type=int, default=20_000, metavar="N",
                        help="also time N rows committed by a loop inside PostgreSQL, --rows-per-tx to a transaction")
    args = parser.parse_args()
    services.ensure_postgres()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, PostgreSQL on localhost; "
          f"{args.seconds:.0f} s per run, median of {args.rounds}, {args.rows_per_tx} audit row(s) per transaction"
          + (", synchronous_commit off" if args.no_fsync else ""))
    print("| writers | without chain (0004) rows/s | p50 / p99 ms | with chain (0005) rows/s | p50 / p99 ms | change |")
    print("|---|---|---|---|---|---|")
    for writers in (int(w) for w in args.writers.split(",") if w):
        runs: dict[str, list[tuple[float, float, float]]] = {"0004": [], "0005": []}
        for _ in range(args.rounds):
            for revision, figures in runs.items():
                figures.append(run(revision, writers, args.seconds, args.rows_per_tx, args.no_fsync))
        plain, chained = (tuple(statistics.median(f[i] for f in runs[r]) for i in range(3)) for r in ("0004", "0005"))
        print(f"| {writers} | {plain[0]:,.0f} | {plain[1]:.1f} / {plain[2]:.1f} | {chained[0]:,.0f} | "
              f"{chained[1]:.1f} / {chained[2]:.1f} | {(chained[0] / plain[0] - 1) * 100:+.0f} % |", flush=True)
    if args.server_side:
        n, per_tx = args.server_side, args.rows_per_tx
        plain_s = statistics.median(server_side("0004", n, per_tx) for _ in range(args.rounds))
        chained_s = statistics.median(server_side("0005", n, per_tx) for _ in range(args.rounds))
        print(f"\ninside PostgreSQL, {n:,} rows, {per_tx:,} to a transaction: {plain_s * 1e6 / n:.0f} µs per row "
              f"without the chain ({plain_s:.2f} s), {chained_s * 1e6 / n:.0f} µs with it ({chained_s:.2f} s): "
              f"+{(chained_s - plain_s) * 1e6 / n:.0f} µs per row")
    if args.seal_rows:
        sealed, verified, rows = seal_and_verify(args.seal_rows)
        print(f"\nmigration 0005 sealed {args.seal_rows:,} existing rows in {sealed:.1f} s "
              f"({args.seal_rows / sealed:,.0f} rows/s); kefu audit verify walked {rows:,} rows in {verified:.1f} s "
              f"({rows / verified:,.0f} rows/s)")


if __name__ == "__main__":
    main()

"""The agent console with 100,000 conversations in PostgreSQL: page latency, the plans behind it, and how soon the
inbox hears of a new message.

    .venv/bin/python -m bench.console_pages [--conversations 100000] [--requests 200] [--clients 1]

Seeds a fresh database (bench/console_seed.py: 100,000 conversations, 300,000 messages, 280,000 replies and
deliveries, 580,000 audit rows), starts a real ``kefu gateway`` process on it (Redis for the bus and the KV
store), creates an agent through ``kefu user add``'s code and logs in through the login form, as a browser does.
Then, with ``--clients`` agents reading at once (each request sent when the previous one of that agent answered),
it times ``--requests`` requests of each kind after 20 warm-up requests:

- the inbox page's HTML, and its data: the first page (50 rows), each filter (waiting, a channel, unanswered, an
  intent, mine), a page 40 pages deep (keyset cursor), one row's summary (what the live update fetches);
- the conversation view's data for random conversations (transcript, audit timeline, sources).

It prints p50/p95/p99 per kind and ``EXPLAIN (ANALYZE, BUFFERS)`` of the inbox's own statement
(channels.console.inbox.page_query) for each filter, so the index each one walks is shown. Last, the live path:
an event stream open as the console page opens it, a visitor's web-chat message posted 50 times, and the time
from the POST to the ``message`` event for that conversation on the stream, and to the refreshed row (the summary
fetch the page makes on that event).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import postgresql

from bench.console_seed import counts, seed
from bench.stats import pct
from channels.console import inbox
from models.infra.db import make_engine, make_session_factory
from models.infra.migrate import upgrade
from models.settings import Settings
from models.states import Handler
from tests import services
from tests.stack import GatewayProcess, kefu_env
from workers import user_command

PASSWORD = "bench-password-123"
WARMUP = 20


def login(base: str, username: str) -> tuple[httpx.Client, str]:
    http = httpx.Client(base_url=base, timeout=30)
    page = http.get("/console/login")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "no login token on the login page"
    done = http.post("/console/login", data={"username": username, "password": PASSWORD, "csrf": found[1]})
    assert done.status_code == 303, done.text[:300]
    return http, http.get("/console/api/me").json()["csrf"]


def timed(clients: list[httpx.Client], paths: Callable[[], str], requests: int) -> list[float]:
    """Each client sends its share of ``requests`` one after another; seconds per request (all must be 200)."""

    def run(http: httpx.Client, n: int) -> list[float]:
        out = []
        for _ in range(n):
            path = paths()
            started = time.perf_counter()
            response = http.get(path)
            out.append(time.perf_counter() - started)
            assert response.status_code == 200, (path, response.status_code, response.text[:200])
        return out

    for http in clients:
        run(http, WARMUP // len(clients) or 1)
    share = max(1, requests // len(clients))
    with ThreadPoolExecutor(len(clients)) as pool:
        return [t for part in pool.map(run, clients, [share] * len(clients)) for t in part]


def explain(url: str, filters: inbox.Filters, before: str | None) -> list[str]:
    statement = inbox.page_query(filters, before, 51)
    sql = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"))]
    finally:
        engine.dispose()


def deep_cursor(http: httpx.Client, pages: int) -> str:
    before = None
    for _ in range(pages):
        body = http.get("/console/api/conversations", params={"before": before} if before else None).json()
        before = body["next"]
    assert before is not None
    return before


class EventStream(threading.Thread):
    """The console's event stream, read in a thread: (arrival time, event) on a queue."""

    def __init__(self, http: httpx.Client) -> None:
        super().__init__(daemon=True)
        self.http = http
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self.ready = threading.Event()
        self.stop = False

    def run(self) -> None:
        try:
            with self.http.stream("GET", "/console/api/events", timeout=httpx.Timeout(5, read=60)) as response:
                for line in response.iter_lines():
                    if self.stop:
                        return
                    if line.startswith("event: ready"):
                        self.ready.set()
                    elif line.startswith("data: "):
                        self.events.put((time.perf_counter(), json.loads(line[6:])))
        except httpx.HTTPError:
            if not self.stop:  # the gateway closing the stream at the end is expected
                raise


def live(base: str, http: httpx.Client, samples: int) -> tuple[list[float], list[float]]:
    stream_client = httpx.Client(base_url=base, timeout=30, cookies=http.cookies)
    stream = EventStream(stream_client)
    stream.start()
    assert stream.ready.wait(10), "the event stream did not open"
    to_event, to_row = [], []
    with httpx.Client(base_url=base, timeout=30) as visitor:
        for n in range(samples):
            session = visitor.post("/v1/web/sessions").json()
            started = time.perf_counter()
            posted = visitor.post("/v1/web/messages", headers={"Authorization": f"Bearer {session['token']}"},
                                  json={"visitor_id": session["visitor_id"],
                                        "text": f"第 {n} 个问题：我的订单什么时候发货？"})
            assert posted.status_code == 202, posted.text[:200]
            while True:
                at, event = stream.events.get(timeout=10)
                if event.get("type") == "message":
                    break
            to_event.append(at - started)
            row = http.get(f"/console/api/conversations/{event['conversation_id']}/summary")
            assert row.status_code == 200, row.text[:200]
            to_row.append(time.perf_counter() - started)
    stream.stop = True
    return to_event, to_row


def report(name: str, times: list[float]) -> None:
    print(f"  {name:<38} n={len(times):>4}  p50 {pct(times, 50):7.1f}  p95 {pct(times, 95):7.1f}  "
          f"p99 {pct(times, 99):7.1f}  max {max(times) * 1e3:7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=1, help="agents reading at once")
    parser.add_argument("--samples", type=int, default=50, help="live messages timed")
    args = parser.parse_args()
    services.ensure_postgres()
    services.ensure_redis()
    db_name, db_url = services.create_database()
    try:
        with tempfile.TemporaryDirectory(prefix="kefu-consolebench-") as tmp:
            data_dir = Path(tmp)
            values: dict[str, Any] = {
                "data_dir": str(data_dir), "database_url": db_url, "broker_url": services.redis_db_url(13),
                "redis_url": services.redis_db_url(13), "secret_key": "bench", "log_level": "WARNING",
            }
            settings = Settings(**values)
            upgrade(settings)
            started = time.perf_counter()
            steps = seed(db_url, args.conversations)
            print(f"seeded in {time.perf_counter() - started:.0f} s: {counts(db_url)}")
            for step, seconds in steps.items():
                print(f"  {step}: {seconds:.1f} s")
            engine = make_engine(settings)
            try:
                sessions = make_session_factory(engine)
                for n in range(args.clients):
                    user_command.add(sessions, f"bench-agent-{n}", "agent", None, lambda: PASSWORD)
            finally:
                engine.dispose()
            gateway = GatewayProcess(kefu_env(values), data_dir / "gateway.log").start()
            try:
                measure(gateway.http_url, db_url, args)
            finally:
                gateway.stop()
    finally:
        services.drop_database(db_name)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    return 0


def measure(base: str, db_url: str, args: argparse.Namespace) -> None:
    logged_in = [login(base, f"bench-agent-{n}") for n in range(args.clients)]
    clients = [http for http, _ in logged_in]
    http = clients[0]
    ids = [row["id"] for row in http.get("/console/api/conversations", params={"limit": 100}).json()["conversations"]]
    claimed = http.post(f"/console/api/conversations/{ids[3]}/claim", headers={"X-CSRF-Token": logged_in[0][1]})
    assert claimed.status_code == 200, claimed.text[:200]
    depth = max(1, min(40, args.conversations // 50 - 1))
    deep = deep_cursor(http, depth)
    rng = random.Random(7)
    top = args.conversations
    kinds: list[tuple[str, Callable[[], str]]] = [
        ("page /console (HTML)", lambda: "/console"),
        ("inbox: first page", lambda: "/console/api/conversations"),
        ("inbox: waiting", lambda: "/console/api/conversations?handler=waiting"),
        ("inbox: channel wecom_kf", lambda: "/console/api/conversations?channel=wecom_kf"),
        ("inbox: unanswered", lambda: "/console/api/conversations?unanswered=1"),
        ("inbox: intent complaint", lambda: "/console/api/conversations?intent=complaint"),
        ("inbox: mine", lambda: "/console/api/conversations?mine=1"),
        (f"inbox: {depth} pages deep", lambda: f"/console/api/conversations?before={deep}"),
        ("inbox: one row (live update)", lambda: f"/console/api/conversations/{rng.randint(1, top)}/summary"),
        ("conversation view", lambda: f"/console/api/conversations/{rng.randint(1, top)}"),
        ("page /console/conversations/N (HTML)", lambda: f"/console/conversations/{rng.randint(1, top)}"),
    ]
    print(f"{args.clients} agent(s) reading at once; {args.requests} requests per kind after {WARMUP} warm-up")
    for name, paths in kinds:
        report(name, timed(clients, paths, args.requests))
    print("plans of the inbox statement (channels.console.inbox.page_query):")
    for name, filters, before in (
        ("first page", inbox.Filters(), None),
        ("waiting", inbox.Filters(handler=Handler.WAITING), None),
        ("channel", inbox.Filters(channel="wecom_kf"), None),
        ("unanswered", inbox.Filters(unanswered=True), None),
        ("intent", inbox.Filters(intent="complaint"), None),
        (f"{depth} pages deep", inbox.Filters(), deep),
    ):
        plan = explain(db_url, filters, before)
        print(f"  -- {name}")
        for line in plan:
            if any(word in line for word in ("Scan", "Execution Time", "Sort", "Limit  (")):
                print(f"     {line.strip()}")
    to_event, to_row = live(base, http, args.samples)
    print("live: a visitor's message → the console")
    report("POST → message event on the stream", to_event)
    report("POST → row refreshed (summary fetched)", to_row)


if __name__ == "__main__":
    raise SystemExit(main())

"""The issue's flood against a gateway with admission control's defaults: what gets through, what is refused.

Starts the gateway in this process (uvicorn on 127.0.0.1, no worker: what is accepted waits in the queue) and, from
one client address, creates 200 web chat sessions as fast as it can, waits for the 2-second window to pass, then sends
50 messages from one visitor. Prints the HTTP status counts and, from the audit log, how many messages reached the
model's queue and how many refusals were recorded. Counts, not timings: the durations are printed only to show the
requests came faster than the limits allow.

Usage: python -m bench.admission_attack [--redis redis://127.0.0.1:6379/12]   (default: embedded, in-memory counts)
"""

from __future__ import annotations

import argparse
import collections
import shutil
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from models.infra.db import make_engine, make_session_factory
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import AuditEvent
from workers.demo.processes import GatewayThread


def flood(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        started = time.monotonic()
        codes = collections.Counter(http.post("/v1/web/sessions").status_code for _ in range(200))
        print(f"200 sessions from one address in {time.monotonic() - started:.2f} s: {dict(codes)}")
        time.sleep(2.1)  # the 2-second window passes (the per-minute one does not)
        body = http.post("/v1/web/sessions").json()
        auth = {"Authorization": f"Bearer {body['token']}"}
        started = time.monotonic()
        codes = collections.Counter(http.post("/v1/web/messages", headers=auth, json={
            "visitor_id": body["visitor_id"], "text": f"我的快递到哪了{n}"}).status_code for n in range(50))
        print(f"50 messages from one visitor in {time.monotonic() - started:.2f} s: {dict(codes)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="count on this Redis (KEFU_REDIS_URL) instead of in memory")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="kefu-admission-"))
    # the defaults, whatever this shell's KEFU_RATE_LIMIT_* say; a fresh key: fresh counts on a shared Redis
    defaults = Settings.model_fields
    settings = Settings(data_dir=data_dir, secret_key=f"attack-{time.time_ns()}", redis_url=args.redis,
                        **{name: defaults[name].default for name in ("rate_limit_ip", "rate_limit_visitor")})
    print(f"limits: address {settings.rate_limit_ip!r}, visitor {settings.rate_limit_visitor!r}; "
          f"counts {'in Redis' if args.redis else 'in memory'}")
    upgrade(settings)
    gateway = GatewayThread(settings).start()
    try:
        flood(gateway.http_url)
        engine = make_engine(settings)
        with make_session_factory(engine)() as session:
            rows = session.execute(select(AuditEvent.kind, func.count()).group_by(AuditEvent.kind)).all()
        kinds = {str(kind): int(count) for kind, count in rows}
        engine.dispose()
        print("audit rows:", {kind: kinds.get(kind, 0) for kind in ("received", "queued", "admission_refused")})
    finally:
        gateway.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

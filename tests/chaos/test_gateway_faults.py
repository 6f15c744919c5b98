"""The gateway under a hung broker and a black-holed database: bounded answers, nothing lost.

A black hole accepts connections and never answers (a dropped route, a hung server): no RST, so the client
only learns by timing out. The gateway runs in this process with its broker/Redis or PostgreSQL behind a
:class:`~tests.chaos.faults.FaultProxy`; the worker and the sweeper use the real servers.

Promises checked:
- hung broker: every POST is answered 202, its message stored with a ``queue_failed`` audit, and ``/readyz`` is a
  503 naming the broker; once the broker answers again the sweeper publishes each and each is answered exactly once.
- black-holed database: a POST gets a JSON 503 and ``/readyz`` a 503 naming the database, both within the
  client's timeout (they hung for ever before); 16 concurrent POSTs all get theirs; when the database answers
  again the gateway serves again.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import select

from models.tables import AuditEvent, InboundRecord
from tests.chaos.conftest import Proxied
from tests.integration.conftest import Stack, settled, wait_for
from tests.integration.test_reliability import backdate, kinds, reply_count
from workers import sweeper, tasks

# The client gives up after this: past the 5 s in which WeChat and WeCom expect an answer.
CLIENT_TIMEOUT_S = 15.0


def _post(stack: Stack, visitor: tuple[str, str], text: str, client_msg_id: str) -> tuple[int, dict[str, Any], float]:
    visitor_id, token = visitor
    started = time.monotonic()
    with httpx.Client(base_url=stack.gateway.http_url, timeout=CLIENT_TIMEOUT_S) as http:
        resp = http.post("/v1/web/messages", headers={"Authorization": f"Bearer {token}"},
                         json={"visitor_id": visitor_id, "text": text, "client_msg_id": client_msg_id})
    return resp.status_code, resp.json(), time.monotonic() - started


def test_a_hung_broker_costs_a_bounded_time_and_the_sweeper_publishes_later(hung_broker: Proxied) -> None:
    stack, proxy = hung_broker.stack, hung_broker.proxy
    visitors = [stack.visitor() for _ in range(16)]
    assert _post(stack, visitors[0], "你好", "warm")[0] == 202  # the gateway's connections are open
    proxy.blackhole()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda n: _post(stack, visitors[n], f"第{n}个问题：怎么退货？", f"h{n}"), range(16)))
    print("POST latencies under a hung broker:", " ".join(f"{r[2]:.2f}" for r in sorted(results, key=lambda r: r[2])))
    assert [r[0] for r in results] == [202] * 16, results
    ids = [r[1]["message_id"] for r in results]
    assert all(kinds(stack, i) == ["received", "queue_failed"] for i in ids)
    with stack.sessions() as s:
        assert set(s.scalars(select(InboundRecord.status).where(InboundRecord.id.in_(ids)))) == {"received"}
    with httpx.Client(base_url=stack.gateway.http_url, timeout=CLIENT_TIMEOUT_S) as http:
        ready = http.get("/readyz")  # the broker's open connection still "connects": only a PING notices
    assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("unreachable"), ready.json()

    proxy.passthrough()
    for i in ids:
        backdate(stack, i, sweeper.NEVER_QUEUED_S + 1)
    assert tasks.sweep()["requeued"] == 16
    wait_for(lambda: all(reply_count(stack, i) == 1 for i in ids), timeout=180)
    assert settled(lambda: [reply_count(stack, i) for i in ids]) == [1] * 16


def test_a_black_holed_database_gets_a_clear_503_and_readyz_notices(black_holed_db: Proxied) -> None:
    stack, proxy = black_holed_db.stack, black_holed_db.proxy
    visitor = stack.visitor()
    assert _post(stack, visitor, "你好", "before")[0] == 202  # the pool holds open connections now

    proxy.blackhole()
    status, body, took = _post(stack, visitor, "还在吗？", "during")
    print(f"POST under a black-holed database: {status} in {took:.2f}s")
    assert status == 503 and body["error"]["code"] == "unavailable"
    with ThreadPoolExecutor(16) as pool:  # no request waits behind the others for the same dead server
        burst = list(pool.map(lambda n: _post(stack, visitor, "在吗？", f"burst{n}"), range(16)))
    print("16 concurrent POSTs under a black-holed database:", " ".join(f"{r[2]:.2f}" for r in burst))
    assert [r[0] for r in burst] == [503] * 16
    with httpx.Client(base_url=stack.gateway.http_url, timeout=CLIENT_TIMEOUT_S) as http:
        started = time.monotonic()
        ready = http.get("/readyz")
        print(f"/readyz under a black-holed database: {ready.status_code} in {time.monotonic() - started:.2f}s")
    assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith("unreachable")
    assert ready.json()["checks"]["broker"] == "ok"

    proxy.passthrough()  # a client retries a 503; the gateway tries the database again within seconds
    status, body, _ = wait_for(lambda: (r := _post(stack, visitor, "还在吗？", "after"))[0] == 202 and r, timeout=30)
    assert status == 202
    wait_for(lambda: reply_count(stack, body["message_id"]) == 1, timeout=120)
    with stack.sessions() as s:  # the 503'd message left no row: the client sends it again
        mine = InboundRecord.external_id.like(f"c-{visitor[0]}-%")
        assert set(s.scalars(select(InboundRecord.external_id).where(mine))) == {f"c-{visitor[0]}-{n}"
                                                                                  for n in ("before", "after")}
        assert s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == body["message_id"])
                         .order_by(AuditEvent.id)).first() == "received"

"""The broker restarts empty with a backlog: every queued message is still answered once, in order.

Redis without persistence (or a failover to an empty replica) forgets the queue. The database still holds
each inbound as ``queued``; the sweeper publishes those again once they are ``requeue_after_s`` old.
"""

from __future__ import annotations

import redis
from sqlalchemy import select

from models.tables import ReplyRecord
from tests.integration.conftest import Stack, wait_for
from tests.integration.test_reliability import FAST_RECOVERY, backdate, kinds, reply_count
from workers import tasks
from workers.demo.processes import WorkerProcess


def test_a_backlog_lost_by_an_emptied_broker_is_answered_once_in_order(tiny_stack: Stack) -> None:
    stack = tiny_stack
    stack.worker.stop()  # the backlog builds up while no worker consumes
    visitor_id, token = stack.visitor()
    texts = ["一：你好", "二：我想查订单", "三：谢谢"]
    with stack.http() as http:
        ids = [http.post("/v1/web/messages", headers={"Authorization": f"Bearer {token}"},
                         json={"visitor_id": visitor_id, "text": t, "client_msg_id": f"b{n}"}).json()["message_id"]
               for n, t in enumerate(texts)]
    assert all(kinds(stack, i) == ["received", "queued"] for i in ids)

    broker = redis.Redis.from_url(stack.settings.broker_url or "")
    assert broker.dbsize() > 0  # the three tasks wait in Redis ...
    broker.flushdb()  # ... and the broker comes back empty
    broker.close()

    stack.worker = WorkerProcess(stack.env, stack.settings.data_dir / "worker2.log")
    assert stack.worker.wait(timeout=60)
    assert all(reply_count(stack, i) == 0 for i in ids)  # nothing left on the queue to answer them

    for i in ids:
        backdate(stack, i, FAST_RECOVERY["requeue_after_s"] + 1)
    assert tasks.sweep()["requeued"] == len(ids)
    wait_for(lambda: all(reply_count(stack, i) == 1 for i in ids), timeout=120)
    assert tasks.sweep()["requeued"] == 0

    with stack.sessions() as s:
        replies = [s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == i)).one() for i in ids]
    assert [r.id for r in replies] == sorted(r.id for r in replies)  # answered in the order they were sent
    for i in ids:
        trail = kinds(stack, i)
        assert trail.count("requeued") == 1 and trail.count("reply_stored") == 1

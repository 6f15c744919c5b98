"""The worker process killed (SIGKILL) after the platform accepted a reply and before Kefu recorded it, then the
redelivery by the sweeper on a new worker — real processes on both backends, the loopback WeChat/WeCom server
killing the worker from inside its own "accepted" step:

- WeChat Customer Service: the resend carries the same ``msgid``, the platform refuses it, the customer has
  the reply once (``resend_refused`` audited, the delivery ``sent``);
- the official account: no idempotency key, so the reply reaches the customer twice — at most once more,
  audited ``possible_duplicate`` (the at-least-once window docs/wechat.md states)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from channels.wechat_fake import FakeWeChat
from models.envelope import utcnow
from models.tables import AuditEvent, DeliveryRecord, InboundRecord, ReplyRecord
from tests import wechat_platform as wp
from tests.integration.conftest import BACKENDS, Stack, settled, start_stack, wait_for
from workers import runtime as worker_runtime
from workers import tasks
from workers.demo.processes import WorkerProcess

FAQ = [{"keywords": ["发票"], "answer": "电子发票会在订单完成后 24 小时内发到您的邮箱。"}]


class KillOnSend:
    """Kills the worker the moment the fake platform has accepted (recorded) the next message to ``endpoint``."""

    def __init__(self) -> None:
        self.stack: Stack | None = None
        self.endpoint: str | None = None

    def arm(self, stack: Stack, endpoint: str) -> None:
        self.stack, self.endpoint = stack, endpoint

    def __call__(self, message: dict[str, Any]) -> None:
        if self.stack is not None and message["endpoint"] == self.endpoint:
            stack, self.stack = self.stack, None
            stack.worker.kill()  # before the HTTP answer leaves: the worker never learns it was accepted


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path, tiny_gguf: Path) -> Iterator[tuple[Stack, FakeWeChat, KillOnSend]]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    killer = KillOnSend()
    with FakeWeChat(on_sent=killer) as fake:
        fake.add_mp_app(wp.APPID, wp.SECRET)
        fake.add_corp_app(wp.CORPID, wp.KF_SECRET)
        stack = start_stack(backend, tmp_path, tiny_gguf, pg, rds, faq=FAQ, wechat_api_base=fake.base_url,
                            wecom_api_base=fake.base_url, wechat_accounts=[wp.account()],
                            wecom_kf_accounts=[wp.kf_account()])
        worker_runtime.configure(stack.settings)
        try:
            yield stack, fake, killer
        finally:
            stack.close()
            worker_runtime.shutdown()


def restart_and_sweep(stack: Stack, reply_id: int) -> None:
    """A new worker; the sweeper finds the delivery the dead one left ``sending`` and publishes it again."""
    stack.worker = WorkerProcess(stack.env, Path(stack.settings.data_dir) / f"worker-{reply_id}.log")
    assert stack.worker.wait(timeout=120)
    with stack.sessions.begin() as s:  # as if KEFU_REDELIVER_AFTER_S had passed
        s.execute(update(DeliveryRecord).where(DeliveryRecord.reply_id == reply_id)
                  .values(updated_at=utcnow() - timedelta(seconds=stack.settings.redeliver_after_s + 1)))
    assert tasks.sweep()["redelivered"] >= 1


def reply_of(stack: Stack, channel: str, external_id: str) -> tuple[int, int]:
    with stack.sessions() as s:
        inbound_id = s.scalars(select(InboundRecord.id).where(InboundRecord.channel == channel,
                                                              InboundRecord.external_id == external_id)).one()
        reply_id = s.scalars(select(ReplyRecord.id).where(ReplyRecord.inbound_id == inbound_id)).one()
    return inbound_id, reply_id


def delivery_status(stack: Stack, reply_id: int) -> str:
    with stack.sessions() as s:
        return str(s.scalars(select(DeliveryRecord.status).where(DeliveryRecord.reply_id == reply_id)).one())


def kinds(stack: Stack, reply_id: int) -> list[str]:
    with stack.sessions() as s:
        return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.reply_id == reply_id).order_by(AuditEvent.id)))


def test_a_worker_killed_between_the_platforms_accept_and_sent_recorded(
        world: tuple[Stack, FakeWeChat, KillOnSend]) -> None:
    stack, fake, killer = world

    # WeChat Customer Service: the FAQ answer goes out through kf/send_msg with our msgid.
    kfid, user = "wkKillSend1", "wm-killed"
    [message] = fake.queue_kf_messages(kfid, [{"external_userid": user, "content": "可以开发票吗"}])
    killer.arm(stack, "kf_send_msg")
    answer = wp.post(stack.gateway.http_url, "/v1/wecom-kf/kf", wp.corp_callback(wp.kf_event_xml(kfid)))
    assert answer.status_code == 200
    wait_for(lambda: stack.worker.proc.poll() is not None, timeout=60)  # killed inside the accepted send
    _, reply_id = reply_of(stack, "wecom_kf", str(message["msgid"]))
    assert delivery_status(stack, reply_id) == "sending"  # the platform has it; Kefu never recorded it
    restart_and_sweep(stack, reply_id)
    wait_for(lambda: delivery_status(stack, reply_id) == "sent", timeout=60)
    assert settled(lambda: [m["content"] for m in fake.sent if m["touser"] == user]) == [FAQ[0]["answer"]]
    resends = [c["json"]["msgid"] for c in fake.calls if c["endpoint"] == "kf_send_msg"
               and c["json"]["touser"] == user]
    assert len(resends) == 2 and resends[0] == resends[1]
    assert kinds(stack, reply_id).count("resend_refused") == 1 and "possible_duplicate" not in kinds(stack, reply_id)

    # The official account: the model's answer through the customer-service message API (no idempotency key).
    openid = "o-killed-openid"
    killer.arm(stack, "custom_send")
    answer = wp.post(stack.gateway.http_url, "/v1/wechat/shop",
                     wp.callback(wp.text_xml(openid, "我的快递到哪里了？", 7301), mode="safe"))
    assert answer.status_code == 200
    wait_for(lambda: stack.worker.proc.poll() is not None, timeout=90)
    _, reply_id = reply_of(stack, "wechat_mp", "7301")
    restart_and_sweep(stack, reply_id)
    wait_for(lambda: delivery_status(stack, reply_id) == "sent", timeout=60)
    copies = settled(lambda: [m["content"] for m in fake.sent if m["touser"] == openid])
    assert len(copies) == 2 and copies[0] == copies[1]  # at least once: one extra copy, never more
    assert kinds(stack, reply_id).count("possible_duplicate") == 1

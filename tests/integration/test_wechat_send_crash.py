"""A worker that dies after the platform accepted a part and before ``parts_sent`` was recorded, then the
redelivery: WeChat Customer Service (our ``msgid``) sends nothing twice; the official account and the WeCom
app (no idempotency key) send that one part again, audited as a possible duplicate. Against the loopback
WeChat/WeCom server and a real database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from channels.base import DeliveryProgress, OutboundDeps
from channels.wechat_fake import FakeWeChat
from channels.wecom_kf.config import peer
from models.envelope import ConversationKey, Reply
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import AuditEvent
from tests import services
from tests import wechat_platform as wp
from tests.integration.conftest import BACKENDS
from workers.runtime import Runtime


class Died(BaseException):
    """The worker process ending between the platform's answer and the database write (kill -9, OOM)."""


def dies_after_the_platform_accepts() -> DeliveryProgress:
    def record(parts_sent: int) -> None:
        raise Died
    return DeliveryProgress(0, record)


@pytest.fixture(params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Runtime, FakeWeChat]]:
    values: dict[str, Any] = {}
    database = None
    if request.param == "redis-postgres":  # a database of its own: the audit rows are this test's only
        services.ensure_postgres()
        database, values["database_url"] = services.create_database()
    with FakeWeChat() as fake:
        fake.add_mp_app(wp.APPID, wp.SECRET)
        fake.add_corp_app(wp.CORPID, wp.APP_SECRET, agentid=wp.AGENTID)
        fake.add_corp_app(wp.CORPID, wp.KF_SECRET)
        settings = Settings(data_dir=tmp_path, wechat_api_base=fake.base_url, wecom_api_base=fake.base_url,
                            wechat_accounts=[wp.account()], wecom_apps=[wp.wecom_app()],
                            wecom_kf_accounts=[wp.kf_account()], **values)
        upgrade(settings)
        rt = Runtime(settings)
        try:
            yield rt, fake
        finally:
            rt.close()
            if database is not None:
                services.drop_database(database)


def audit_kinds(rt: Runtime, reply_id: int) -> list[str]:
    with rt.sessions() as s:
        return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.reply_id == reply_id).order_by(AuditEvent.id)))


def crash_then_redeliver(deps: OutboundDeps, send: Any, reply: Reply) -> list[int]:
    with pytest.raises(Died):
        send(reply, dies_after_the_platform_accepts())
    recorded: list[int] = []
    send(reply, DeliveryProgress(0, recorded.append))  # parts_sent was never recorded: it starts again at 0
    return recorded


def test_kf_a_redelivery_after_a_crash_sends_nothing_twice(world: tuple[Runtime, FakeWeChat]) -> None:
    rt, fake = world
    reply = Reply(41, 40, 4, ConversationKey("wecom_kf", "kf", peer(wp.OPEN_KFID, "wm-crash")), "您的退款已经到账。",
                  datetime.now(UTC))
    outbound = rt.outbound("wecom_kf")
    assert crash_then_redeliver(outbound.deps, outbound.send, reply) == [1]  # counted as sent
    assert [m["content"] for m in fake.sent] == ["您的退款已经到账。"]  # once, though it was sent twice
    attempts = [c["json"]["msgid"] for c in fake.calls if c["endpoint"] == "kf_send_msg"]
    assert len(attempts) == 2 and attempts[0] == attempts[1]  # the same msgid both times
    assert audit_kinds(rt, 41) == ["send_attempted", "send_attempted", "resend_refused"]


def test_kf_a_part_whose_first_attempt_never_reached_the_platform_is_sent(world: tuple[Runtime, FakeWeChat]) -> None:
    rt, fake = world
    fake.fail_next("kf_send_msg", -1)  # busy: retryable, and the platform did not take it
    reply = Reply(42, 43, 4, ConversationKey("wecom_kf", "kf", peer(wp.OPEN_KFID, "wm-busy")), "第二次才发出。",
                  datetime.now(UTC))
    outbound = rt.outbound("wecom_kf")
    with pytest.raises(Exception, match="-1"):
        outbound.send(reply, DeliveryProgress(0, lambda n: None))
    outbound.send(reply, DeliveryProgress(0, lambda n: None))
    assert [m["content"] for m in fake.sent] == ["第二次才发出。"]
    assert "resend_refused" not in audit_kinds(rt, 42)


def test_kf_a_resend_after_an_answered_refusal_is_not_taken_for_sent(world: tuple[Runtime, FakeWeChat]) -> None:
    """The platform answered the first attempt with an errcode, so it does not have the part: a later refusal for
    another reason is a real failure, not the msgid it already has."""
    rt, fake = world
    fake.fail_next("kf_send_msg", -1)
    fake.fail_next("kf_send_msg", 40003)  # not a used msgid: this customer cannot be sent to
    reply = Reply(44, 45, 4, ConversationKey("wecom_kf", "kf", peer(wp.OPEN_KFID, "wm-gone")), "发不出去。",
                  datetime.now(UTC))
    outbound = rt.outbound("wecom_kf")
    recorded: list[int] = []
    for errcode in ("-1", "40003"):
        with pytest.raises(Exception, match=errcode):
            outbound.send(reply, DeliveryProgress(0, recorded.append))
    assert recorded == [] and fake.sent == []
    assert audit_kinds(rt, 44) == ["send_attempted", "send_refused", "send_attempted", "send_refused"]


@pytest.mark.parametrize(("channel", "key", "endpoint"), [
    ("wechat_mp", ConversationKey("wechat_mp", "shop", "o-busy-openid"), "custom_send"),
    ("wecom", ConversationKey("wecom", "it", "wangwu"), "message_send"),
])
def test_a_resend_after_the_platform_refused_the_part_is_no_possible_duplicate(
        world: tuple[Runtime, FakeWeChat], channel: str, key: ConversationKey, endpoint: str) -> None:
    rt, fake = world
    fake.fail_next(endpoint, 45009)  # rate limited: answered, not taken
    reply = Reply(52, 53, 5, key, "稍后送达。", datetime.now(UTC))
    outbound = rt.outbound(channel)
    with pytest.raises(Exception, match="45009"):
        outbound.send(reply, DeliveryProgress(0, lambda n: None))
    outbound.send(reply, DeliveryProgress(0, lambda n: None))
    assert [m["content"] for m in fake.sent if m["endpoint"] == endpoint] == ["稍后送达。"]
    assert "possible_duplicate" not in audit_kinds(rt, 52)


@pytest.mark.parametrize(("channel", "key", "endpoint"), [
    ("wechat_mp", ConversationKey("wechat_mp", "shop", "o-crash-openid"), "custom_send"),
    ("wecom", ConversationKey("wecom", "it", "lisi"), "message_send"),
])
def test_without_an_idempotency_key_at_most_the_part_in_flight_is_sent_twice_and_audited(
        world: tuple[Runtime, FakeWeChat], channel: str, key: ConversationKey, endpoint: str) -> None:
    rt, fake = world
    text = "请您耐心等待。" * 300  # 6,300 bytes: 4 parts; the worker dies right after the first is accepted
    reply = Reply(51, 50, 5, key, text, datetime.now(UTC))
    outbound = rt.outbound(channel)
    assert crash_then_redeliver(outbound.deps, outbound.send, reply) == [1, 2, 3, 4]
    contents = [str(m["content"]) for m in fake.sent if m["endpoint"] == endpoint]
    assert len(contents) == 5 and contents[0] == contents[1]  # one part twice, nothing else repeated
    assert "".join(contents[1:]) == text
    kinds = audit_kinds(rt, 51)
    assert kinds.count("possible_duplicate") == 1 and kinds.count("send_attempted") == 5
    with rt.sessions() as s:
        flagged = s.scalars(select(AuditEvent).where(AuditEvent.reply_id == 51,
                                                     AuditEvent.kind == "possible_duplicate")).one()
    assert flagged.detail == {"part": 0}  # which part, never its text

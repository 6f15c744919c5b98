"""WeCom app and WeChat Customer Service senders against the loopback WeCom server: splitting,
the 5-message cap, 95018, and the hand-off to a person."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from channels.base import DeliveryPermanent, DeliveryProgress, OutboundDeps
from channels.wechat_fake import KF_MSGID, FakeWeChat
from channels.wecom import WeComOutbound
from channels.wecom_kf.config import peer
from channels.wecom_kf.handoff import handoff_key
from channels.wecom_kf.outbound import WeComKfOutbound
from models.envelope import ConversationKey, Reply
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import AuditEvent
from tests import wechat_platform as wp
from workers.runtime import Runtime

USER = "wm-customer-1"


@pytest.fixture
def fake() -> Iterator[FakeWeChat]:
    with FakeWeChat() as f:
        f.add_corp_app(wp.CORPID, wp.APP_SECRET, agentid=wp.AGENTID)
        f.add_corp_app(wp.CORPID, wp.KF_SECRET)
        yield f


@pytest.fixture
def deps(tmp_path: Path, fake: FakeWeChat) -> Iterator[OutboundDeps]:
    """What the worker's own wiring (``Runtime``) gives the WeChat Customer Service sender."""
    settings = Settings(data_dir=tmp_path, wecom_api_base=fake.base_url, wecom_apps=[wp.wecom_app()],
                        wecom_kf_accounts=[wp.kf_account(servicer_userid="zhangsan")])
    upgrade(settings)
    rt = Runtime(settings)
    try:
        yield rt.outbound("wecom_kf").deps
    finally:
        rt.close()


def kf_reply(text: str, source: str = "model", hours_ago: float = 0) -> Reply:
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    return Reply(7, 3, 2, ConversationKey("wecom_kf", "kf", peer(wp.OPEN_KFID, USER)), text, at, source)


def test_wecom_app_reply_is_split_on_utf8_boundaries(deps: OutboundDeps, fake: FakeWeChat) -> None:
    text = "您的工单已经处理完毕。" * 400  # 13,200 bytes: 7 parts, no 5-message cap on app messages
    recorded: list[int] = []
    reply = Reply(1, 1, 1, ConversationKey("wecom", "it", "lisi"), text)
    WeComOutbound(deps).send(reply, DeliveryProgress(0, recorded.append))
    contents = [str(m["content"]) for m in fake.sent]
    assert all(m["endpoint"] == "message_send" and m["agentid"] == wp.AGENTID and m["touser"] == "lisi"
               for m in fake.sent)
    assert len(contents) == 7 and recorded == list(range(1, 8))
    assert all(len(c.encode()) <= 2048 for c in contents)
    assert "".join(contents) == text  # nothing lost, nothing cut mid-character


def test_kf_reply_is_capped_at_five_messages_with_our_own_msgids(deps: OutboundDeps, fake: FakeWeChat) -> None:
    text = "感谢您的耐心等待。" * 800
    reply = kf_reply(text)
    WeComKfOutbound(deps).send(reply, DeliveryProgress(0, lambda n: None))
    assert [m["endpoint"] for m in fake.sent] == ["kf_send_msg"] * 5
    assert reply.inbound_at is not None
    stamp = f"{int(reply.inbound_at.timestamp()):x}"
    assert [m["msgid"] for m in fake.sent] == [f"kefu-7-{i}-{stamp}" for i in range(5)]
    assert all(KF_MSGID.fullmatch(str(m["msgid"])) for m in fake.sent)  # the platform's rule for our own msgid
    assert all(m["open_kfid"] == wp.OPEN_KFID and m["touser"] == USER for m in fake.sent)
    assert str(fake.sent[-1]["content"]).endswith("…")


def test_kf_refuses_outside_the_48_hour_window(deps: OutboundDeps, fake: FakeWeChat) -> None:
    with pytest.raises(DeliveryPermanent, match="48-hour"):
        WeComKfOutbound(deps).send(kf_reply("迟到的回复", hours_ago=49), DeliveryProgress(0, lambda n: None))
    assert fake.sent == []


def test_kf_95018_is_a_permanent_failure(deps: OutboundDeps, fake: FakeWeChat) -> None:
    fake.kf_service_state[(wp.OPEN_KFID, USER)] = 3  # a person took the conversation meanwhile
    with pytest.raises(DeliveryPermanent, match="95018"):
        WeComKfOutbound(deps).send(kf_reply("模型的回答"), DeliveryProgress(0, lambda n: None))
    assert fake.sent == []


@pytest.mark.parametrize("source", ["handoff", "fallback"])
def test_kf_hand_off_sends_the_notice_then_moves_the_session(deps: OutboundDeps, fake: FakeWeChat,
                                                             source: str) -> None:
    assert deps.kv is not None
    marker = handoff_key(ConversationKey("wecom_kf", "kf", peer(wp.OPEN_KFID, USER)))
    deps.kv.set(marker, "1", 60)  # set by the sync that stored the notice
    WeComKfOutbound(deps).send(kf_reply("正在为您转接人工客服", source), DeliveryProgress(0, lambda n: None))
    assert deps.kv.get(marker) is None  # the platform says who serves the customer from now on
    assert [m["content"] for m in fake.sent] == ["正在为您转接人工客服"]
    assert fake.kf_service_state[(wp.OPEN_KFID, USER)] == 3
    assert fake.kf_servicers[(wp.OPEN_KFID, USER)] == "zhangsan"
    trans = [c["json"] for c in fake.calls if c["endpoint"] == "service_state_trans"]
    assert trans == [{"open_kfid": wp.OPEN_KFID, "external_userid": USER, "service_state": 3,
                      "servicer_userid": "zhangsan"}]
    with deps.sessions() as s:
        events = list(s.scalars(select(AuditEvent).where(AuditEvent.kind == "handed_off")))
    assert len(events) == 1 and events[0].detail["service_state"] == 3
    # A retried delivery (parts already sent) transfers nothing twice and sends nothing again.
    WeComKfOutbound(deps).send(kf_reply("正在为您转接人工客服", source), DeliveryProgress(1, lambda n: None))
    assert len(fake.sent) == 1
    assert len([c for c in fake.calls if c["endpoint"] == "service_state_trans"]) == 1


def test_a_model_answer_does_not_hand_off(deps: OutboundDeps, fake: FakeWeChat) -> None:
    WeComKfOutbound(deps).send(kf_reply("您的订单明天送达。"), DeliveryProgress(0, lambda n: None))
    assert len(fake.sent) == 1
    assert not [c for c in fake.calls if c["endpoint"] == "service_state_trans"]

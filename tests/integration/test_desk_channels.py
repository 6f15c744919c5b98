"""Take-over and hand-back on the WeChat family, end to end: signed callbacks (official account, WeCom app) and
kf pulls into the real gateway, a real worker and the loopback WeChat/WeCom server, with an agent account online.

For each platform: 转人工 puts the conversation in the console's waiting queue and the notice goes out through the
platform's send API (the official account's passive reply is NOT a transfer to its own staff; the kf session is
NOT moved to a servicer); a further message is stored ``human`` and the model stays out; an agent's reply arrives
through the same API exactly as written (kf: while the session state is still 0/1); hand-back sends the request
for a score; "5" stores a CsatRecord for that agent's round and the thanks arrives; the next message is the
model's again. Every check reads what the fake platform received, not only rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from channels.wechat_fake import FakeWeChat
from models import csat, desk
from models.envelope import utcnow
from models.infra.db import transaction
from models.infra.queues import Publisher, make_celery
from models.states import Handler, InboundStatus, Presence, Role
from models.tables import AgentRecord, AuditEvent, ConversationRecord, CsatRecord, InboundRecord
from tests import wechat_platform as wp
from tests.integration.conftest import BACKENDS, Stack, settled, start_stack, wait_for

AGENT_TEXT = "您好，我是人工客服小王，您的订单已经加急处理。"


@dataclass
class DeskStack:
    stack: Stack
    fake: FakeWeChat
    agent_id: int
    publisher: Publisher

    def post(self, cb: wp.Callback, path: str) -> httpx.Response:
        return wp.post(self.stack.gateway.http_url, path, cb)

    def kinds(self, inbound_id: int) -> list[str]:
        with self.stack.sessions() as s:
            return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id)
                                  .order_by(AuditEvent.id)))


@pytest.fixture(scope="module", params=BACKENDS)
def ds(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[DeskStack]:
    backend = request.param
    pg = request.getfixturevalue("module_pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    with FakeWeChat() as fake:
        fake.add_mp_app(wp.APPID, wp.SECRET)
        fake.add_corp_app(wp.CORPID, wp.APP_SECRET, agentid=wp.AGENTID)
        fake.add_corp_app(wp.CORPID, wp.KF_SECRET)
        stack = start_stack(backend, tmp_path_factory.mktemp(f"desk-{backend}"), tiny_gguf, pg, rds,
                            wechat_accounts=[wp.account("staffed", human_service=True)],
                            wecom_apps=[wp.wecom_app()], wecom_kf_accounts=[wp.kf_account()],
                            wechat_api_base=fake.base_url, wecom_api_base=fake.base_url,
                            desk_presence_s=86400.0, delivery_max_retries=2)
        try:
            with transaction(stack.sessions) as session:  # online before the first message: the desk is open
                agent = AgentRecord(username=f"wang-{backend}", display_name="小王", role=Role.AGENT,
                                    password_hash="x", status=Presence.ONLINE, seen_at=utcnow())
                session.add(agent)
                session.flush()
                agent_id = int(agent.id)
            yield DeskStack(stack, fake, agent_id, Publisher(make_celery(stack.settings, gateway=True)))
        finally:
            stack.close()


@dataclass
class Customer:
    """One customer on one platform: how they write, and what the platform sent them (endpoint, text)."""

    channel: str
    endpoint: str  # the platform API the customer's messages arrive through
    write: Callable[[str], str]  # sends a message; its external id
    sent: Callable[[], list[str]]


def mp_customer(ds: DeskStack, openid: str) -> Customer:
    counter = iter(range(7100, 7200))

    def write(text: str) -> str:
        msgid = next(counter)
        cb = wp.callback(wp.text_xml(openid, text, msgid=msgid), mode="aes")
        r = ds.post(cb, "/v1/wechat/staffed")
        assert r.status_code == 200
        # the account's own staff never get the conversation while the desk has it: no transfer_customer_service
        assert "transfer_customer_service" not in r.text
        if r.text != "success":  # an encrypted passive reply (none is expected on these paths)
            pytest.fail(f"unexpected passive reply {wp.read_passive_reply(r.text, cb)!r}")
        return str(msgid)

    return Customer("wechat_mp", "custom_send", write, lambda: [
        str(m["content"]) for m in list(ds.fake.sent) if m["endpoint"] == "custom_send" and m["touser"] == openid])


def wecom_customer(ds: DeskStack, userid: str) -> Customer:
    counter = iter(range(7200, 7300))

    def write(text: str) -> str:
        msgid = next(counter)
        r = ds.post(wp.corp_callback(wp.wecom_text_xml(userid, text, msgid=msgid)), "/v1/wecom/it")
        assert (r.status_code, r.text) == (200, "")  # no passive reply: everything goes by message/send
        return str(msgid)

    return Customer("wecom", "message_send", write, lambda: [
        str(m["content"]) for m in list(ds.fake.sent) if m["endpoint"] == "message_send" and m["touser"] == userid])


def kf_customer(ds: DeskStack, kfid: str, user: str) -> Customer:
    def write(text: str) -> str:
        msgid = str(ds.fake.queue_kf_messages(kfid, [{"external_userid": user, "content": text}])[0]["msgid"])
        r = ds.post(wp.corp_callback(wp.kf_event_xml(kfid)), "/v1/wecom-kf/kf")
        assert (r.status_code, r.text) == (200, "")
        return msgid

    def sent() -> list[str]:
        return [str(m["content"]) for m in list(ds.fake.sent)
                if m["endpoint"] == "kf_send_msg" and m["touser"] == user and m["open_kfid"] == kfid]

    return Customer("wecom_kf", "kf_send_msg", write, sent)


def _inbound(ds: DeskStack, channel: str, external_id: str) -> InboundRecord:
    def found() -> InboundRecord | None:
        with ds.stack.sessions() as s:
            return s.scalars(select(InboundRecord).where(InboundRecord.channel == channel,
                                                         InboundRecord.external_id == external_id)).first()
    return wait_for(found, timeout=30)


def _handler(ds: DeskStack, conversation_id: int) -> str:
    with ds.stack.sessions() as s:
        return str(s.scalar(select(ConversationRecord.handler).where(ConversationRecord.id == conversation_id)))


def _grows(customer: Customer, before: int) -> list[str]:
    """The platform's messages to the customer once one more has arrived (and no other follows)."""
    wait_for(lambda: len(customer.sent()) > before, timeout=60)
    return settled(customer.sent)


CUSTOMERS = {
    "wechat_mp": lambda ds: mp_customer(ds, "o-desk-mp"),
    "wecom": lambda ds: wecom_customer(ds, "desk-lisi"),
    "wecom_kf": lambda ds: kf_customer(ds, "wkDesk00001", "wm-desk"),
}


@pytest.mark.parametrize("channel", list(CUSTOMERS))
def test_take_over_agent_reply_hand_back_and_score(ds: DeskStack, channel: str) -> None:
    settings = ds.stack.settings
    customer = CUSTOMERS[channel](ds)
    kf_calls_before = len([c for c in ds.fake.calls if c["endpoint"] == "service_state_trans"])

    # 转人工: the conversation waits for an agent; the notice goes through the platform's send API
    asked = _inbound(ds, channel, customer.write("我要转人工"))
    conversation_id = asked.conversation_id
    assert _handler(ds, conversation_id) == Handler.WAITING
    assert _grows(customer, 0) == [settings.handoff_reply]

    # the customer writes again: stored for the person, nothing reaches the model or the platform
    later = _inbound(ds, channel, customer.write("你好，在吗？我的订单还没到"))
    wait_for(lambda: ds.kinds(later.id)[-1:] == ["human_owned"])
    with ds.stack.sessions() as s:
        assert s.scalar(select(InboundRecord.status).where(InboundRecord.id == later.id)) == InboundStatus.HUMAN
    assert "generation_started" not in ds.kinds(later.id)
    with ds.stack.sessions() as s:  # held by the console's desk, not the platform's own staff or servicers
        held = s.scalar(select(AuditEvent.detail).where(AuditEvent.inbound_id == later.id,
                                                        AuditEvent.kind == "human_owned"))
    assert held == {"via": "desk"}
    assert settled(customer.sent) == [settings.handoff_reply]

    # the agent claims and answers: exactly that text, through the same API
    with transaction(ds.stack.sessions) as session:
        desk.claim(session, conversation_id, ds.agent_id)
        reply_id = desk.store_agent_reply(session, conversation_id, ds.agent_id, AGENT_TEXT)
    ds.publisher.deliver(reply_id)
    assert _grows(customer, 1) == [settings.handoff_reply, AGENT_TEXT]
    if channel == "wecom_kf":  # the session never left Kefu: send_msg was allowed (state 0/1), no trans call
        assert ds.fake.kf_service_state.get(("wkDesk00001", "wm-desk"), 0) in (0, 1)
        assert len([c for c in ds.fake.calls if c["endpoint"] == "service_state_trans"]) == kf_calls_before

    # hand-back: the request for a score arrives
    with transaction(ds.stack.sessions) as session:
        assert desk.hand_back(session, conversation_id, ds.agent_id)
        request_id = csat.ask(session, conversation_id, ds.agent_id, settings)
    assert request_id is not None
    ds.publisher.deliver(request_id)
    assert _grows(customer, 2)[-1] == settings.csat_request_reply

    # "５分": recorded for the agent's round, thanked, never given to the model
    score = _inbound(ds, channel, customer.write("５分"))
    assert _grows(customer, 3)[-1] == settings.csat_thanks_reply
    with ds.stack.sessions() as s:
        rows = s.execute(select(CsatRecord.score, CsatRecord.agent_id, CsatRecord.round, CsatRecord.channel)
                         .where(CsatRecord.conversation_id == conversation_id)).all()
    assert [tuple(r) for r in rows] == [(5, ds.agent_id, 1, channel)]
    assert "generation_started" not in ds.kinds(score.id)

    # the next message is the model's again
    again = _inbound(ds, channel, customer.write("那运费怎么算？"))
    wait_for(lambda: "dispatched" in ds.kinds(again.id), timeout=60)
    assert "generation_started" in ds.kinds(again.id)
    assert len(settled(customer.sent)) == 5
    if channel == "wecom_kf":
        assert len([c for c in ds.fake.calls if c["endpoint"] == "service_state_trans"]) == kf_calls_before

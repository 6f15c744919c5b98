"""WeCom app and WeChat Customer Service end to end: encrypted callbacks into the real gateway, a real
worker pulling kf messages and answering through the loopback WeCom server."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from channels.wechat_fake import FakeWeChat
from channels.wecom_kf.adapter import request_sync
from models.envelope import utcnow
from models.infra.kv import make_kv
from models.infra.queues import Publisher, make_celery
from models.tables import AuditEvent, InboundRecord, KfCursorRecord, ReplyRecord
from tests import wechat_platform as wp
from tests.integration.conftest import BACKENDS, Stack, settled, start_stack, wait_for
from workers import runtime as worker_runtime
from workers import tasks
from workers.demo.processes import WorkerProcess

FAQ = [{"keywords": ["发票"], "answer": "电子发票会在订单完成后 24 小时内发到您的邮箱。"}]


@dataclass
class WeComStack:
    stack: Stack
    fake: FakeWeChat

    def post(self, cb: wp.Callback, path: str) -> httpx.Response:
        return wp.post(self.stack.gateway.http_url, path, cb)

    def sent_count(self, endpoint: str) -> int:
        """Calls of ``endpoint``, failed ones included."""
        return len([c for c in list(self.fake.calls) if c["endpoint"] == endpoint])

    def sent(self, endpoint: str, touser: str | None = None) -> list[dict[str, object]]:
        return [m for m in list(self.fake.sent) if m["endpoint"] == endpoint and touser in (None, m["touser"])]

    def kinds(self, inbound_id: int) -> list[str]:
        with self.stack.sessions() as s:
            return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id)
                                  .order_by(AuditEvent.id)))

    def inbound(self, channel: str, external_id: str) -> InboundRecord:
        with self.stack.sessions() as s:
            return s.scalars(select(InboundRecord).where(InboundRecord.channel == channel,
                                                         InboundRecord.external_id == external_id)).one()

    def kf_notify(self, open_kfid: str = wp.OPEN_KFID) -> None:
        r = self.post(wp.corp_callback(wp.kf_event_xml(open_kfid)), "/v1/wecom-kf/kf")
        assert (r.status_code, r.text) == (200, "")


@pytest.fixture(scope="module", params=BACKENDS)
def wc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[WeComStack]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    with FakeWeChat() as fake:
        fake.add_corp_app(wp.CORPID, wp.APP_SECRET, agentid=wp.AGENTID)
        fake.add_corp_app(wp.CORPID, wp.KF_SECRET)
        stack = start_stack(backend, tmp_path_factory.mktemp(f"wecom-{backend}"), tiny_gguf, pg, rds,
                            wecom_apps=[wp.wecom_app()], wecom_kf_accounts=[wp.kf_account()],
                            wecom_api_base=fake.base_url, faq=FAQ, delivery_max_retries=2)
        try:
            yield WeComStack(stack, fake)
        finally:
            stack.close()


# ---- URL verification --------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/wecom/it", "/v1/wecom-kf/kf"])
def test_url_verification_returns_the_decrypted_echostr(wc: WeComStack, path: str) -> None:
    with wc.stack.http() as http:
        ok = http.get(path, params=wp.corp_url_verification("8417632597215409364"))
        assert (ok.status_code, ok.text) == (200, "8417632597215409364")
        forged = wp.corp_url_verification("x") | {"msg_signature": "0" * 40}
        assert http.get(path, params=forged).status_code == 403
        other_corp = wp.corp_url_verification("x", corpid="wwsomeoneelse")  # signed right, wrong receive id
        refused = http.get(path, params=other_corp)
        assert (refused.status_code, refused.text) == (400, "the message could not be decrypted")
        assert http.get(path.rsplit("/", 1)[0] + "/nobody", params=wp.corp_url_verification("x")).status_code == 404


# ---- WeCom self-built app ------------------------------------------------------------------------

def test_app_text_is_answered_by_the_model_through_message_send(wc: WeComStack) -> None:
    r = wc.post(wp.corp_callback(wp.wecom_text_xml("lisi", "打印机坏了怎么报修？", msgid=5001)), "/v1/wecom/it")
    assert (r.status_code, r.text) == (200, "")  # acknowledged at once; the answer comes by API
    wait_for(lambda: wc.sent("message_send", "lisi"), timeout=30)
    sent = wc.sent("message_send", "lisi")
    assert len(sent) == 1 and sent[0]["agentid"] == wp.AGENTID and sent[0]["content"]
    row = wc.inbound("wecom", "5001")
    wait_for(lambda: "dispatched" in wc.kinds(row.id))
    assert wc.kinds(row.id) == ["received", "queued", "generation_started", "generation_finished",
                                "reply_stored", "send_attempted", "dispatched"]


def test_app_faq_is_answered_passively_and_encrypted(wc: WeComStack) -> None:
    cb = wp.corp_callback(wp.wecom_text_xml("wangwu", "发票什么时候开？", msgid=5002))
    r = wc.post(cb, "/v1/wecom/it")
    assert r.status_code == 200 and "<Encrypt>" in r.text
    assert wp.read_corp_passive_reply(r.text) == FAQ[0]["answer"]
    assert wc.kinds(wc.inbound("wecom", "5002").id) == ["received", "reply_stored", "dispatched"]
    assert not wc.sent("message_send", "wangwu")


def test_app_enter_agent_gets_the_welcome(wc: WeComStack) -> None:
    xml = (f"<xml><ToUserName><![CDATA[{wp.CORPID}]]></ToUserName><FromUserName><![CDATA[zhaoliu]]></FromUserName>"
           f"<CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType>"
           f"<Event><![CDATA[enter_agent]]></Event><EventKey><![CDATA[]]></EventKey>"
           f"<AgentID>{wp.AGENTID}</AgentID></xml>")
    r = wc.post(wp.corp_callback(xml), "/v1/wecom/it")
    assert wp.read_corp_passive_reply(r.text).startswith("您好")


def test_app_callbacks_that_fail_verification_leave_no_row(wc: WeComStack) -> None:
    def count() -> int:
        with wc.stack.sessions() as s:
            return s.scalar(select(func.count()).select_from(InboundRecord)) or 0

    before = count()
    xml = wp.wecom_text_xml("mallory", "hi", msgid=5900)
    forged = wp.corp_callback(xml)
    forged.params["msg_signature"] = "0" * 40
    assert wc.post(forged, "/v1/wecom/it").status_code == 403
    stale = wp.corp_callback(xml, timestamp=1_600_000_000)
    assert wc.post(stale, "/v1/wecom/it").status_code == 403
    wrong_key = wp.corp_callback(xml, aes_key="B" * 43)  # signed with the right token, sealed with another key
    assert wc.post(wrong_key, "/v1/wecom/it").status_code == 400
    other_agent = wp.corp_callback(wp.wecom_text_xml("mallory", "hi", msgid=5901, agentid=999))
    assert wc.post(other_agent, "/v1/wecom/it").status_code == 400
    first = wp.corp_callback(xml, nonce="fixednonce")
    assert wc.post(first, "/v1/wecom/it").status_code == 200
    replay = wp.corp_callback(wp.wecom_text_xml("mallory", "transfer money", msgid=5902), nonce="fixednonce",
                              timestamp=int(first.params["timestamp"]))
    assert wc.post(replay, "/v1/wecom/it").status_code == 403
    assert count() == before + 1  # only the genuine one


def test_app_ten_concurrent_retries_give_one_reply(wc: WeComStack) -> None:
    cb = wp.corp_callback(wp.wecom_text_xml("sunqi", "在吗？", msgid=5003))
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: wc.post(cb, "/v1/wecom/it"), range(10))]
    assert statuses == [200] * 10
    wait_for(lambda: wc.sent("message_send", "sunqi"), timeout=30)
    row = wc.inbound("wecom", "5003")
    wait_for(lambda: "dispatched" in wc.kinds(row.id))
    with wc.stack.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ReplyRecord).where(ReplyRecord.inbound_id == row.id)) == 1
    assert settled(lambda: len(wc.sent("message_send", "sunqi"))) == 1
    assert wc.kinds(row.id).count("duplicate") == 9


# ---- WeChat Customer Service ----------------------------------------------------------------------

def _cursor(wc: WeComStack, open_kfid: str, account: str = "kf") -> KfCursorRecord:
    with wc.stack.sessions() as s:
        return s.scalars(select(KfCursorRecord).where(KfCursorRecord.open_kfid == open_kfid,
                                                      KfCursorRecord.account == account)).one()


def test_kf_burst_across_two_pages_is_answered_once_each_and_survives_a_restart(wc: WeComStack) -> None:
    kfid = "wkBurst0001"
    wc.fake.kf_page_size = 15
    users = [f"wm-burst-{i}" for i in range(5)]
    messages = wc.fake.queue_kf_messages(kfid, [{"external_userid": users[i % 5], "content": f"第{i}个问题：怎么退货？"}
                                                for i in range(25)])
    for _ in range(3):  # the platform notifies per message; several notices, one pull
        wc.kf_notify(kfid)
    wait_for(lambda: len([m for m in wc.sent("kf_send_msg") if m["open_kfid"] == kfid]) >= 25, timeout=90)
    sent = settled(lambda: [m for m in wc.sent("kf_send_msg") if m["open_kfid"] == kfid])
    assert len(sent) == 25 and len({m["msgid"] for m in sent}) == 25
    assert sorted(str(m["touser"]) for m in sent) == sorted(users * 5)
    with wc.stack.sessions() as s:
        rows = list(s.scalars(select(InboundRecord).where(
            InboundRecord.channel == "wecom_kf", InboundRecord.external_id.in_([m["msgid"] for m in messages]))))
        assert len(rows) == 25 and all(r.status == "answered" for r in rows)
    pulls = [c["json"] for c in wc.fake.calls if c["endpoint"] == "kf_sync_msg" and c["json"]["open_kfid"] == kfid]
    assert len(pulls) >= 2 and "cursor" not in pulls[0] and pulls[1]["cursor"]  # page 2 followed has_more
    assert pulls[0]["token"] == "ENCsynctoken"  # the callback's token is passed on
    cursor = _cursor(wc, kfid)
    assert cursor.cursor and cursor.requested == cursor.synced >= 1

    # Restart: a new worker process starts from the stored cursor and repeats nothing.
    wc.stack.worker.stop()
    wc.stack.worker = WorkerProcess(wc.stack.env, Path(wc.stack.settings.data_dir) / "worker-restarted.log")
    assert wc.stack.worker.wait(timeout=120)
    calls_before = len(wc.fake.calls)
    wc.fake.queue_kf_messages(kfid, [{"external_userid": users[0], "content": "重启后的新问题"}])
    wc.kf_notify(kfid)
    wait_for(lambda: len([m for m in wc.sent("kf_send_msg") if m["open_kfid"] == kfid]) >= 26, timeout=60)
    after = [c["json"] for c in wc.fake.calls[calls_before:] if c["endpoint"] == "kf_sync_msg"]
    assert after[0]["cursor"] == cursor.cursor
    wait_for(lambda: _cursor(wc, kfid).synced == _cursor(wc, kfid).requested)
    assert settled(lambda: len([m for m in wc.sent("kf_send_msg") if m["open_kfid"] == kfid])) == 26


def test_kf_customer_asking_for_a_person_is_handed_off_and_the_model_stays_out(wc: WeComStack) -> None:
    kfid, user = "wkHandoff01", "wm-handoff"
    first = wc.fake.queue_kf_messages(kfid, [{"external_userid": user, "content": "我要转人工"}])[0]
    wc.kf_notify(kfid)
    wait_for(lambda: wc.fake.kf_service_state.get((kfid, user)) == 2, timeout=30)
    assert [m["content"] for m in wc.sent("kf_send_msg", user)] == ["好的，正在为您转接人工客服，请稍候。"]
    handoff = wc.inbound("wecom_kf", str(first["msgid"]))
    wait_for(lambda: "dispatched" in wc.kinds(handoff.id))  # the transfer is part of sending the notice
    assert wc.kinds(handoff.id) == ["received", "reply_stored", "send_attempted", "handed_off", "dispatched"]

    later = wc.fake.queue_kf_messages(kfid, [{"external_userid": user, "content": "你好？有人吗"}])[0]
    wc.kf_notify(kfid)
    wait_for(lambda: _cursor(wc, kfid).synced == _cursor(wc, kfid).requested)
    row = wc.inbound("wecom_kf", str(later["msgid"]))
    assert row.status == "human" and wc.kinds(row.id) == ["received", "human_owned"]
    assert settled(lambda: len(wc.sent("kf_send_msg", user))) == 1  # nothing more from the model


def test_kf_message_right_after_asking_for_a_person_is_for_the_person_even_before_the_transfer(
        wc: WeComStack) -> None:
    kfid, user = "wkHandoff02", "wm-handoff-2"
    wc.fake.fail_next("kf_send_msg", -1, times=2)  # the notice (and so the transfer after it) takes ~3 s of retries
    sent_before = wc.sent_count("kf_send_msg")
    first = wc.fake.queue_kf_messages(kfid, [{"external_userid": user, "content": "转人工"}])[0]
    wc.kf_notify(kfid)
    wait_for(lambda: wc.sent_count("kf_send_msg") > sent_before, timeout=30)  # its first (failed) attempt
    assert "reply_stored" in wc.kinds(wc.inbound("wecom_kf", str(first["msgid"])).id)
    assert wc.fake.kf_service_state.get((kfid, user), 0) == 0  # not transferred yet
    later = wc.fake.queue_kf_messages(kfid, [{"external_userid": user, "content": "在吗？"}])[0]
    wc.kf_notify(kfid)
    wait_for(lambda: _cursor(wc, kfid).synced == _cursor(wc, kfid).requested)
    row = wc.inbound("wecom_kf", str(later["msgid"]))
    assert row.status == "human" and wc.kinds(row.id) == ["received", "human_owned"]
    wait_for(lambda: wc.fake.kf_service_state.get((kfid, user)) == 2, timeout=30)  # then the transfer happened
    assert settled(lambda: [m["content"] for m in wc.sent("kf_send_msg", user)]) == ["好的，正在为您转接人工客服，请稍候。"]


def test_kf_a_customer_whose_session_state_cannot_be_read_does_not_stop_the_account(wc: WeComStack) -> None:
    kfid, user = "wkState0001", "wm-state"
    wc.fake.fail_next("service_state_get", 40003)  # permanent: "invalid openid"
    message = wc.fake.queue_kf_messages(kfid, [{"external_userid": user, "content": "怎么退货？"}])[0]
    wc.kf_notify(kfid)
    wait_for(lambda: wc.sent("kf_send_msg", user), timeout=60)  # the model answered it anyway
    assert wc.inbound("wecom_kf", str(message["msgid"])).status == "answered"
    wait_for(lambda: _cursor(wc, kfid).synced == _cursor(wc, kfid).requested)


def test_kf_faq_and_images_are_answered_without_the_model(wc: WeComStack) -> None:
    kfid, user = "wkQuick0001", "wm-quick"
    faq, image = wc.fake.queue_kf_messages(kfid, [
        {"external_userid": user, "content": "可以开发票吗"},
        {"external_userid": user, "msgtype": "image", "image": {"media_id": "MEDIA1"}},
    ])
    wc.kf_notify(kfid)
    wait_for(lambda: len(wc.sent("kf_send_msg", user)) >= 2, timeout=30)
    contents = [m["content"] for m in wc.sent("kf_send_msg", user)]
    assert contents[0] == FAQ[0]["answer"] and "图片" in str(contents[1])
    assert wc.kinds(wc.inbound("wecom_kf", str(faq["msgid"])).id)[:2] == ["received", "reply_stored"]
    assert "generation_started" not in wc.kinds(wc.inbound("wecom_kf", str(image["msgid"])).id)


def test_kf_news_whose_pull_was_never_published_is_pulled_by_the_sweeper(wc: WeComStack) -> None:
    kfid, user = "wkLost00001", "wm-lost"
    wc.fake.queue_kf_messages(kfid, [{"external_userid": user, "content": "有人吗"}])
    settings = wc.stack.settings
    dead = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0", "publish_timeout_s": 0.5})
    kv = make_kv(settings)
    request_sync(wc.stack.sessions, Publisher(make_celery(dead, "dead-broker")), kv, "kf", kfid, None)
    assert not [c for c in wc.fake.calls if c["endpoint"] == "kf_sync_msg" and c["json"]["open_kfid"] == kfid]
    with wc.stack.sessions.begin() as s:  # the sweeper leaves fresh requests to their own task
        s.execute(update(KfCursorRecord).where(KfCursorRecord.open_kfid == kfid)
                  .values(requested_at=utcnow() - timedelta(seconds=60)))
    worker_runtime.configure(settings)
    try:
        assert tasks.sweep()["resynced"] == 1
        wait_for(lambda: wc.sent("kf_send_msg", user), timeout=30)
        wait_for(lambda: _cursor(wc, kfid).synced == _cursor(wc, kfid).requested)
        assert tasks.sweep()["resynced"] == 0
        # an account that is no longer configured is dropped once, not published again by every sweep
        request_sync(wc.stack.sessions, Publisher(make_celery(dead, "dead-broker")), kv, "gone", kfid, None)
        with wc.stack.sessions.begin() as s:
            s.execute(update(KfCursorRecord).where(KfCursorRecord.account == "gone")
                      .values(requested_at=utcnow() - timedelta(seconds=60)))
        assert tasks.sweep()["resynced"] == 1
        wait_for(lambda: _cursor(wc, kfid, "gone").synced == _cursor(wc, kfid, "gone").requested)
        assert tasks.sweep()["resynced"] == 0
    finally:
        worker_runtime.shutdown()
        getattr(kv, "close", lambda: None)()

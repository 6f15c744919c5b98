"""The WeChat official-account channel end to end: signed (and encrypted) callbacks into the real
gateway, a real worker answering through the customer-service API of a loopback WeChat server."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from channels.wechat_fake import FakeWeChat
from models.tables import AuditEvent, DeliveryRecord, InboundRecord, ReplyRecord
from tests import wechat_platform as wp
from tests.integration.conftest import BACKENDS, Stack, settled, start_stack, stored_rows, wait_for
from tests.metrics_scrape import scrape
from workers.demo.processes import free_port

FAQ = [{"keywords": ["营业时间"], "answer": "我们的营业时间是每天 9:00–21:00。"}]


@dataclass
class WeChatStack:
    stack: Stack
    fake: FakeWeChat

    def post(self, cb: wp.Callback, account: str = "shop") -> httpx.Response:
        return wp.post(self.stack.gateway.http_url, f"/v1/wechat/{account}", cb)

    def rows(self) -> tuple[int, int]:
        return stored_rows(self.stack.sessions)

    def kinds(self, inbound_id: int) -> list[str]:
        with self.stack.sessions() as s:
            return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id)
                                  .order_by(AuditEvent.id)))

    def inbound_id(self, external_id: str) -> int:
        with self.stack.sessions() as s:
            return int(s.scalars(select(InboundRecord.id).where(InboundRecord.external_id == external_id)).one())

    def sends_to(self, openid: str) -> list[dict[str, object]]:
        return [m for m in self.fake.sent if m["touser"] == openid]

    def counted(self, name: str, **labels: str) -> float:
        """A metric's value on the gateway's /metrics and the worker's metrics port together."""
        worker = f"http://127.0.0.1:{self.stack.settings.worker_metrics_port}/metrics"
        return sum(scrape(url).value(name, **labels) for url in (f"{self.stack.gateway.http_url}/metrics", worker))


@pytest.fixture(scope="module", params=BACKENDS)
def wx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[WeChatStack]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    with FakeWeChat() as fake:
        fake.add_mp_app(wp.APPID, wp.SECRET)
        stack = start_stack(backend, tmp_path_factory.mktemp(f"wx-{backend}"), tiny_gguf, pg, rds,
                            wechat_accounts=[wp.account(), wp.account("staffed", human_service=True)],
                            wechat_api_base=fake.base_url, faq=FAQ,
                            delivery_max_retries=2, worker_metrics_port=free_port())
        try:
            yield WeChatStack(stack, fake)
        finally:
            stack.close()


def test_url_verification(wx: WeChatStack) -> None:
    cb = wp.callback("")
    with httpx.Client(base_url=wx.stack.gateway.http_url) as http:
        ok = http.get("/v1/wechat/shop", params={**cb.params, "echostr": "echo-123"})
        assert (ok.status_code, ok.text) == (200, "echo-123")
        bad = http.get("/v1/wechat/shop", params={**cb.params, "signature": "0" * 40, "echostr": "x"})
        assert bad.status_code == 403
        assert http.get("/v1/wechat/nobody", params=cb.params).status_code == 404


@pytest.mark.parametrize("mode", ["raw", "compat", "aes"])
def test_text_is_answered_by_the_model_through_the_customer_service_api(wx: WeChatStack, mode: str) -> None:
    openid = f"o-model-{mode}"
    msgid = {"raw": 1001, "compat": 1002, "aes": 1003}[mode]
    r = wx.post(wp.callback(wp.text_xml(openid, "你好，我的快递到哪了？", msgid=msgid), mode=mode))
    assert (r.status_code, r.text) == (200, "success")  # acknowledged at once; the answer comes later
    wait_for(lambda: wx.sends_to(openid), timeout=30)
    sent = wx.sends_to(openid)
    assert len(sent) == 1 and sent[0]["content"]
    inbound_id = wx.inbound_id(str(msgid))
    wait_for(lambda: "dispatched" in wx.kinds(inbound_id))
    assert wx.kinds(inbound_id) == ["received", "queued", "generation_started", "generation_finished",
                                    "reply_stored", "send_attempted", "dispatched"]
    with wx.stack.sessions() as s:
        reply = s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == inbound_id)).one()
        assert reply.text.startswith(str(sent[0]["content"])[:20]) and reply.source == "model"


@pytest.mark.parametrize("mode", ["raw", "aes"])
def test_faq_hit_is_answered_passively(wx: WeChatStack, mode: str) -> None:
    openid = f"o-faq-{mode}"
    msgid = {"raw": 2001, "aes": 2002}[mode]
    faq = {"name": "kefu_messages_total", "channel": "wechat_mp", "outcome": "faq"}
    acks = {"name": "kefu_ack_seconds_count", "channel": "wechat_mp", "route": "/v1/wechat/{name}", "method": "POST"}
    faq_before, acks_before = wx.counted(**faq), wx.counted(**acks)
    cb = wp.callback(wp.text_xml(openid, "请问你们的营业时间？", msgid=msgid), mode=mode)
    r = wx.post(cb)
    assert r.status_code == 200
    assert wp.read_passive_reply(r.text, cb) == FAQ[0]["answer"]
    inbound_id = wx.inbound_id(str(msgid))
    assert wx.kinds(inbound_id) == ["received", "reply_stored", "dispatched"]
    assert not wx.sends_to(openid)  # no customer-service message, no model
    again = wx.post(cb)  # WeChat's retry of the same callback gets the same answer, and nothing new
    assert wp.read_passive_reply(again.text, cb) == FAQ[0]["answer"]
    assert wx.kinds(inbound_id) == ["received", "reply_stored", "dispatched", "duplicate"]
    assert wx.counted(**faq) == faq_before + 1  # the retry is not a second answer
    assert wx.counted(**acks) == acks_before + 2  # but each callback was acknowledged, and timed


def test_subscribe_gets_the_welcome_and_images_a_polite_fallback(wx: WeChatStack) -> None:
    cb = wp.callback(wp.event_xml("o-new", "subscribe"))
    assert wp.read_passive_reply(wx.post(cb).text, cb).startswith("您好，欢迎关注")
    image = wp.text_xml("o-new", "", msgid=3001, kind="image",
                        extra="<PicUrl><![CDATA[http://x/y.jpg]]></PicUrl><MediaId><![CDATA[m1]]></MediaId>")
    cb = wp.callback(image, mode="aes")
    assert "图片" in wp.read_passive_reply(wx.post(cb).text, cb)
    voice = wp.text_xml("o-new", "", msgid=3002, kind="voice",
                        extra="<MediaId><![CDATA[m2]]></MediaId><Format><![CDATA[amr]]></Format>")
    assert wx.post(wp.callback(voice)).text == "success"  # downloaded and transcribed by the worker (m2 is unknown:
    wait_for(lambda: wx.sends_to("o-new"), timeout=30)  # 40007, so it asks to repeat; see test_wechat_voice.py)
    assert "语音" in str(wx.sends_to("o-new")[0]["content"])
    unsubscribe = wp.callback(wp.event_xml("o-new", "unsubscribe"))
    assert wx.post(unsubscribe).text == "success"


def test_voice_with_recognition_is_answered_as_text(wx: WeChatStack) -> None:
    voice = wp.text_xml("o-voice", "", msgid=3100, kind="voice",
                        extra="<MediaId><![CDATA[m3]]></MediaId><Format><![CDATA[amr]]></Format>"
                              "<Recognition><![CDATA[我想退货]]></Recognition>")
    assert wx.post(wp.callback(voice)).text == "success"
    wait_for(lambda: wx.sends_to("o-voice"), timeout=30)
    with wx.stack.sessions() as s:
        row = s.scalars(select(InboundRecord).where(InboundRecord.external_id == "3100")).one()
        assert (row.kind, row.text) == ("voice", "我想退货")


def test_ten_concurrent_deliveries_of_one_message_give_one_reply(wx: WeChatStack) -> None:
    cb = wp.callback(wp.text_xml("o-dup", "在吗？", msgid=4000), mode="aes")
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: wx.post(cb), range(10)))
    assert {(r.status_code, r.text) for r in responses} == {(200, "success")}
    wait_for(lambda: wx.sends_to("o-dup"), timeout=30)
    inbound_id = wx.inbound_id("4000")
    wait_for(lambda: "dispatched" in wx.kinds(inbound_id))
    kinds = wx.kinds(inbound_id)
    assert kinds.count("received") == 1 and kinds.count("duplicate") == 9 and kinds.count("reply_stored") == 1
    assert settled(lambda: len(wx.sends_to("o-dup"))) == 1


def test_forged_stale_and_replayed_callbacks_are_refused_without_a_trace(wx: WeChatStack) -> None:
    good = wp.callback(wp.text_xml("o-attacker", "hi", msgid=5000))
    assert wx.post(good).text == "success"
    wait_for(lambda: "dispatched" in wx.kinds(wx.inbound_id("5000")), timeout=30)
    before = wx.rows()
    forged = wp.callback(wp.text_xml("o-attacker", "hi", msgid=5001), token="not-the-token")
    stale = wp.callback(wp.text_xml("o-attacker", "hi", msgid=5002), timestamp=1_600_000_000)
    replay = wp.Callback(good.params, wp.text_xml("o-attacker", "transfer money", msgid=5003).encode())
    forged_aes = wp.callback(wp.text_xml("o-attacker", "hi", msgid=5004), mode="aes")
    forged_aes.params["msg_signature"] = "f" * 40
    for cb in (forged, stale, replay, forged_aes):
        assert wx.post(cb).status_code == 403
    assert wx.rows() == before


def test_undecryptable_messages_get_one_generic_400(wx: WeChatStack) -> None:
    xml = wp.text_xml("o-crypto", "hi", msgid=6000)
    other_key = wp.callback(xml, mode="aes", aes_key="B" * 43)
    wrong_appid = wp.callback(xml, mode="aes", appid="wxsomeoneelse")
    tampered = wp.callback(xml, mode="aes")
    body = tampered.body.decode()
    start = body.index("<Encrypt><![CDATA[") + len("<Encrypt><![CDATA[")
    cipher = body[start:body.index("]]>", start)]
    flipped = cipher[:-8] + ("AAAAAAA=" if not cipher[:-8].endswith("A") else "BBBBBBB=")
    from tests.wechat_platform import sign
    tampered = wp.Callback({**tampered.params, "msg_signature": sign(wp.TOKEN, tampered.params["timestamp"],
                                                                     tampered.params["nonce"], flipped)},
                           body.replace(cipher, flipped).encode())
    before = wx.rows()
    answers = {(r.status_code, r.text) for r in (wx.post(cb) for cb in (other_key, wrong_appid, tampered))}
    assert answers == {(400, "the message could not be decrypted")}
    assert wx.rows() == before


def test_hostile_xml_and_huge_bodies_are_refused(wx: WeChatStack) -> None:
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              + "".join(f'<!ENTITY lol{i} "{"&lol{};".format(i - 1 if i > 1 else "") * 10}">' for i in range(1, 10))
              + ']><xml><Content>&lol9;</Content></xml>')
    external = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime>"
                "<MsgType>text</MsgType><Content>&e;</Content><MsgId>7000</MsgId></xml>")
    before = wx.rows()
    for xml in (laughs, external):
        r = wx.post(wp.callback(xml))
        assert r.status_code == 400 and "DOCTYPE" in r.text
    huge = wp.callback("<xml>" + "x" * (10 * 1024 * 1024) + "</xml>")
    assert wx.post(huge).status_code == 413
    assert wx.post(wp.callback("<xml><unclosed>")).status_code == 400
    assert wx.rows() == before


def test_window_closed_45015_is_recorded_as_failed_and_not_retried(wx: WeChatStack) -> None:
    failed = {"name": "kefu_delivery_failures_total", "channel": "wechat_mp", "kind": "permanent", "code": "45015"}
    before = wx.counted(**failed)
    wx.fake.fail_next("custom_send", 45015)
    assert wx.post(wp.callback(wp.text_xml("o-gone", "还在吗", msgid=8000))).text == "success"
    inbound_id = wx.inbound_id("8000")
    wait_for(lambda: "delivery_failed" in wx.kinds(inbound_id), timeout=30)
    with wx.stack.sessions() as s:
        reply_id = s.scalars(select(ReplyRecord.id).where(ReplyRecord.inbound_id == inbound_id)).one()
        delivery = s.scalars(select(DeliveryRecord).where(DeliveryRecord.reply_id == reply_id)).one()
        assert delivery.status == "failed" and "45015" in (delivery.last_error or "")
    attempts = [c for c in wx.fake.calls if c["endpoint"] == "custom_send" and (c["json"] or {}).get("touser") == "o-gone"]
    assert len(attempts) == 1
    assert wx.counted(**failed) == before + 1


def test_a_rate_limited_send_is_retried_with_backoff(wx: WeChatStack) -> None:
    retried = {"name": "kefu_delivery_failures_total", "channel": "wechat_mp", "kind": "retry", "code": "45009"}
    before = wx.counted(**retried)
    wx.fake.fail_next("custom_send", 45009)
    assert wx.post(wp.callback(wp.text_xml("o-busy", "你好", msgid=8100))).text == "success"
    wait_for(lambda: "dispatched" in wx.kinds(wx.inbound_id("8100")), timeout=30)  # written after the fake has it
    kinds = wx.kinds(wx.inbound_id("8100"))
    assert kinds.count("delivery_retry") == 1 and kinds[-1] == "dispatched"
    assert kinds.count("send_refused") == 1 and "possible_duplicate" not in kinds  # 45009: WeChat did not take it
    assert wx.counted(**retried) == before + 1


def test_an_expired_token_is_refreshed_once_and_the_send_goes_through(wx: WeChatStack) -> None:
    assert wx.post(wp.callback(wp.text_xml("o-tok", "第一条", msgid=8200))).text == "success"
    wait_for(lambda: wx.sends_to("o-tok"), timeout=30)
    issued = len(wx.fake.token_requests)
    wx.fake.expire_tokens()
    assert wx.post(wp.callback(wp.text_xml("o-tok", "第二条", msgid=8201))).text == "success"
    wait_for(lambda: len(wx.sends_to("o-tok")) == 2, timeout=30)
    assert len(wx.fake.token_requests) == issued + 1


def _msg_type(response_text: str, cb: wp.Callback) -> str:
    import xmltodict
    from wechatpy.crypto import WeChatCrypto

    xml = response_text
    if cb.params.get("encrypt_type") == "aes":
        envelope = xmltodict.parse(response_text)["xml"]
        xml = WeChatCrypto(wp.TOKEN, wp.AES_KEY, wp.APPID).decrypt_message(
            response_text, envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"])
    return str(xmltodict.parse(xml)["xml"]["MsgType"])


def test_asking_for_a_person_passes_the_conversation_to_the_accounts_staff_until_they_close_it(
        wx: WeChatStack) -> None:
    openid = "o-staffed"
    handed, human = ({"name": "kefu_messages_total", "channel": "wechat_mp", "outcome": outcome}
                     for outcome in ("handoff", "human"))
    handed_before, human_before = wx.counted(**handed), wx.counted(**human)
    cb = wp.callback(wp.text_xml(openid, "我要转人工", msgid=5101), mode="aes")
    r = wx.post(cb, account="staffed")
    assert _msg_type(r.text, cb) == "transfer_customer_service"  # the platform hands the message to the staff
    wait_for(lambda: wx.sends_to(openid), timeout=30)
    assert settled(lambda: [m["content"] for m in wx.sends_to(openid)]) == ["好的，正在为您转接人工客服，请稍候。"]
    cb = wp.callback(wp.text_xml(openid, "你好，在吗？", msgid=5102), mode="aes")
    assert _msg_type(wx.post(cb, account="staffed").text, cb) == "transfer_customer_service"
    later = wx.inbound_id("5102")
    assert wx.kinds(later) == ["received", "human_owned"]  # the model stays out
    assert (wx.counted(**handed), wx.counted(**human)) == (handed_before + 1, human_before + 1)
    assert wx.post(wp.callback(wp.event_xml(openid, "kf_close_session")), account="staffed").text == "success"
    back = wx.post(wp.callback(wp.text_xml(openid, "快递到哪了？", msgid=5103)), account="staffed")
    assert back.text == "success"  # the conversation is the model's again
    wait_for(lambda: len(wx.sends_to(openid)) == 2, timeout=30)
    assert "generation_started" in wx.kinds(wx.inbound_id("5103"))


def test_without_staff_asking_for_a_person_gets_an_honest_answer_not_an_empty_promise(wx: WeChatStack) -> None:
    cb = wp.callback(wp.text_xml("o-unstaffed", "转人工", msgid=5201))
    r = wx.post(cb)
    assert wp.read_passive_reply(r.text, cb) == wx.stack.settings.handoff_unavailable_reply
    assert wx.kinds(wx.inbound_id("5201")) == ["received", "reply_stored", "dispatched"]

"""Two edges of the WeChat callbacks, through the real gateway on a real socket (embedded backends, no worker):
strict safe mode (an account that accepts only encrypted callbacks refuses plaintext ones, without a trace),
and a text over ``KEFU_MAX_TEXT_CHARS`` (cut, the customer told in the reply, the cut audited without text) —
on the official account and on WeChat Customer Service's pull."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import select

from channels.base import DeliveryProgress
from channels.wechat_fake import FakeWeChat
from channels.wechat_mp import WeChatMPSettings
from channels.wecom_kf.adapter import request_sync
from models.envelope import ConversationKey, Reply
from models.infra.migrate import upgrade
from models.settings import ConfigError, Settings
from models.states import ReplySource
from models.tables import AuditEvent, InboundRecord, ReplyRecord
from tests import wechat_platform as wp
from tests.integration.conftest import stored_rows
from workers.demo.processes import GatewayThread
from workers.runtime import Runtime

LIMIT = 30
ANSWER = "电子发票会在订单完成后 24 小时内发到您的邮箱。"
FAQ = [{"keywords": ["发票"], "answer": ANSWER}]
LONG = "我想问一下发票的事情，" + "订单号和收货地址都在这里，" * 20  # 271 characters, the FAQ keyword within the first 30
NOTE = f"（您的消息较长，我们只读取了前 {LIMIT} 个字。）"


@dataclass
class Edges:
    gateway: GatewayThread
    rt: Runtime
    fake: FakeWeChat

    def post(self, name: str, cb: wp.Callback) -> httpx.Response:
        return wp.post(self.gateway.http_url, f"/v1/wechat/{name}", cb)

    def rows(self) -> tuple[int, int]:
        return stored_rows(self.rt.sessions)

    def inbound(self, channel: str, external_id: str) -> InboundRecord:
        with self.rt.sessions() as s:
            return s.scalars(select(InboundRecord).where(InboundRecord.channel == channel,
                                                         InboundRecord.external_id == external_id)).one()

    def audit(self, inbound_id: int, kind: str) -> list[dict[str, object]]:
        with self.rt.sessions() as s:
            return [e.detail for e in s.scalars(select(AuditEvent).where(AuditEvent.inbound_id == inbound_id,
                                                                         AuditEvent.kind == kind))]


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edges]:
    with FakeWeChat() as fake:
        fake.add_mp_app(wp.APPID, wp.SECRET)
        fake.add_corp_app(wp.CORPID, wp.KF_SECRET)
        settings = Settings(data_dir=tmp_path_factory.mktemp("wechat-edges"), secret_key="k", faq=FAQ,
                            max_text_chars=LIMIT, wechat_api_base=fake.base_url, wecom_api_base=fake.base_url,
                            wechat_accounts=[wp.account(), wp.account("strict", encrypted_only=True)],
                            wecom_kf_accounts=[wp.kf_account()])
        upgrade(settings)
        gateway = GatewayThread(settings).start()
        rt = Runtime(settings)
        try:
            yield Edges(gateway, rt, fake)
        finally:
            rt.close()
            gateway.stop()


# ---- strict safe mode ------------------------------------------------------------------------------------


def test_strict_safe_mode_refuses_plaintext_callbacks_without_a_trace(edges: Edges,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    before = edges.rows()
    with caplog.at_level(logging.WARNING):
        answer = edges.post("strict", wp.callback(wp.text_xml("o-plain", "我的身份证号 110101199003077777", 9101)))
    assert answer.status_code == 403 and "encrypted" in answer.text
    assert edges.rows() == before  # nothing stored, nothing audited
    refused = [r.getMessage() for r in caplog.records if "encryption_required" in r.getMessage()]
    assert refused and all("strict" in m and "110101" not in m and "o-plain" not in m for m in refused)


@pytest.mark.parametrize("mode", ["safe", "compat"])
def test_strict_safe_mode_still_serves_encrypted_callbacks(edges: Edges, mode: str) -> None:
    cb = wp.callback(wp.text_xml(f"o-{mode}", "可以开发票吗", 9110 + len(mode)), mode=mode)
    answer = edges.post("strict", cb)
    assert answer.status_code == 200
    assert wp.read_passive_reply(answer.text, cb) == ANSWER


def test_without_strict_safe_mode_plaintext_is_still_accepted(edges: Edges) -> None:
    cb = wp.callback(wp.text_xml("o-raw", "可以开发票吗", 9120))
    answer = edges.post("shop", cb)
    assert answer.status_code == 200 and wp.read_passive_reply(answer.text, cb) == ANSWER


def test_strict_safe_mode_without_an_aes_key_stops_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {k: v for k, v in wp.account("strict", encrypted_only=True).items() if k != "aes_key"}
    with pytest.raises(ConfigError, match=r"KEFU_WECHAT_ACCOUNTS.*encrypted_only.*aes_key"):
        Settings(wechat_accounts=[entry]).section(WeChatMPSettings)


# ---- a text over max_text_chars ---------------------------------------------------------------------------


def test_a_long_text_answered_at_once_tells_the_customer_and_is_audited_without_text(edges: Edges) -> None:
    cb = wp.callback(wp.text_xml("o-long", LONG, 9201), mode="safe")
    answer = edges.post("shop", cb)
    assert answer.status_code == 200
    assert wp.read_passive_reply(answer.text, cb) == NOTE + "\n" + ANSWER
    row = edges.inbound("wechat_mp", "9201")
    assert row.text == LONG[:LIMIT]
    assert edges.audit(row.id, "truncated") == [{"chars": len(LONG), "kept": LIMIT}]
    assert edges.post("shop", cb).status_code == 200  # the platform's retry: one message, one audit row
    assert len(edges.audit(row.id, "truncated")) == 1


def test_the_models_answer_to_a_long_text_carries_the_note(edges: Edges) -> None:
    text = "请帮我看看这个问题：" + "屏幕一直闪烁，" * 20
    assert edges.post("shop", wp.callback(wp.text_xml("o-model", text, 9202), mode="safe")).status_code == 200
    row = edges.inbound("wechat_mp", "9202")  # queued for the model (no worker runs here)
    assert edges.audit(row.id, "truncated") == [{"chars": len(text), "kept": LIMIT}]
    reply = Reply(920, row.id, row.conversation_id, ConversationKey("wechat_mp", "shop", "o-model"),
                  "建议您先重启设备。", datetime.now(UTC))
    edges.rt.outbound("wechat_mp").send(reply, _progress())
    assert edges.fake.sent[-1]["content"] == NOTE + "\n建议您先重启设备。"
    short = edges.post("shop", wp.callback(wp.text_xml("o-model", "谢谢", 9203), mode="safe"))
    assert short.status_code == 200
    whole = edges.inbound("wechat_mp", "9203")
    assert edges.audit(whole.id, "truncated") == []
    edges.rt.outbound("wechat_mp").send(Reply(921, whole.id, whole.conversation_id, reply.key, "不客气。",
                                              datetime.now(UTC)), _progress())
    assert edges.fake.sent[-1]["content"] == "不客气。"  # a message read whole gets no note


def test_a_workers_rule_answer_to_a_cut_message_carries_the_note_once(edges: Edges) -> None:
    """A cut voice transcription answered by the FAQ is stored by the worker without the note; an answer given at
    once was stored with it: both go out with the note exactly once."""
    text = "我说一下我的情况：" + "我的订单号是一长串数字，" * 20  # queued: no worker runs here
    assert edges.post("shop", wp.callback(wp.text_xml("o-rule", text, 9204), mode="safe")).status_code == 200
    row = edges.inbound("wechat_mp", "9204")
    key = ConversationKey("wechat_mp", "shop", "o-rule")
    for reply_id, stored in [(940, ANSWER), (941, NOTE + "\n" + ANSWER)]:
        edges.rt.outbound("wechat_mp").send(Reply(reply_id, row.id, row.conversation_id, key, stored,
                                                  datetime.now(UTC), ReplySource.FAQ), _progress())
        assert edges.fake.sent[-1]["content"] == NOTE + "\n" + ANSWER


def test_a_long_kf_message_is_cut_told_and_audited(edges: Edges) -> None:
    kfid, user = "wkLongText1", "wm-long"
    [faq] = edges.fake.queue_kf_messages(kfid, [{"external_userid": user, "content": LONG}])
    request_sync(edges.rt.sessions, NoPublish(), edges.rt.kv, "kf", kfid, None)  # type: ignore[arg-type]
    assert edges.rt.puller("wecom_kf").run("kf", kfid) == 1
    row = edges.inbound("wecom_kf", str(faq["msgid"]))
    assert row.text == LONG[:LIMIT]
    assert edges.audit(row.id, "truncated") == [{"chars": len(LONG), "kept": LIMIT}]
    with edges.rt.sessions() as s:
        stored = s.scalars(select(ReplyRecord.text).where(ReplyRecord.inbound_id == row.id)).one()
    assert stored == NOTE + "\n" + ANSWER  # stored with the note: every attempt sends the same parts


class NoPublish:
    """The pull is run here, by the test."""

    def pull(self, *args: object, **kwargs: object) -> None:
        pass


def _progress() -> DeliveryProgress:
    return DeliveryProgress(0, lambda n: None)

"""WeChat voice messages without the platform's Recognition, end to end: the callback stores the media id
and answers at once; a real worker downloads the file from the loopback platform (``media/get``),
decodes it, transcribes it with the local recognizer (pocketsphinx) and answers through the quick rules
or the model — on the official account, the WeCom app and WeChat Customer Service.

The voices are espeak-ng speech encoded to AMR by the reference codecs (pocketsphinx is English only:
"hello" and "yes" are what it hears reliably)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select

from channels.speech.espeak import EspeakSynthesizer
from channels.wechat_fake import FakeWeChat
from channels.wechat_mp import WeChatAccount
from models.tables import AuditEvent, InboundRecord, ReplyRecord
from tests import voice_files
from tests import wechat_platform as wp
from tests.integration.conftest import BACKENDS, Stack, settled, start_stack, wait_for

FAQ = [{"keywords": ["yes"], "answer": "好的，已为您登记。"}]
# kf hands off on "hello"; the official account here has staff, but a transcribed request for a person cannot be
# passed to them from the worker (only a callback's reply can), so its "hello" goes to the model
HANDOFF_KEYWORDS = ["hello"]
UNCLEAR = "抱歉，我没有听清您的语音。请您再说一遍，或者直接打字告诉我您的问题。"


@dataclass
class VoiceStack:
    stack: Stack
    fake: FakeWeChat
    tts: EspeakSynthesizer

    def post(self, cb: wp.Callback, path: str) -> httpx.Response:
        return wp.post(self.stack.gateway.http_url, path, cb)

    def sent(self, endpoint: str, touser: str) -> list[dict[str, Any]]:
        return [m for m in list(self.fake.sent) if m["endpoint"] == endpoint and m["touser"] == touser]

    def inbound(self, channel: str, external_id: str) -> InboundRecord:
        row = self.find(channel, external_id)
        assert row is not None
        return row

    def find(self, channel: str, external_id: str) -> InboundRecord | None:
        with self.stack.sessions() as s:
            return s.scalars(select(InboundRecord).where(InboundRecord.channel == channel,
                                                         InboundRecord.external_id == external_id)).first()

    def audit(self, inbound_id: int) -> list[AuditEvent]:
        with self.stack.sessions() as s:
            return list(s.scalars(select(AuditEvent).where(AuditEvent.inbound_id == inbound_id).order_by(AuditEvent.id)))

    def kinds(self, inbound_id: int) -> list[str]:
        return [event.kind for event in self.audit(inbound_id)]

    def reply(self, inbound_id: int) -> ReplyRecord:
        with self.stack.sessions() as s:
            return s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == inbound_id)).one()

    def amr(self, text: str, *, wideband: bool = False) -> bytes:
        if wideband:
            return voice_files.amr_wb(self.tts.synthesize(text, 16000))
        return voice_files.amr_nb(self.tts.synthesize(text, 8000))


@pytest.fixture(scope="module", params=BACKENDS)
def vs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[VoiceStack]:
    backend = request.param
    pg = request.getfixturevalue("pg_url") if backend == "redis-postgres" else None
    rds = request.getfixturevalue("redis_url") if backend == "redis-postgres" else None
    forget_tokens(rds)  # another module's fake issued them: tokens look alike (same counters), so they would be tried
    with FakeWeChat() as fake:
        fake.add_mp_app(wp.APPID, wp.SECRET)
        fake.add_corp_app(wp.CORPID, wp.APP_SECRET, agentid=wp.AGENTID)
        fake.add_corp_app(wp.CORPID, wp.KF_SECRET)
        stack = start_stack(backend, tmp_path_factory.mktemp(f"voice-{backend}"), tiny_gguf, pg, rds,
                            wechat_accounts=[wp.account(human_service=True)], wecom_apps=[wp.wecom_app()],
                            wecom_kf_accounts=[wp.kf_account()], wechat_api_base=fake.base_url,
                            wecom_api_base=fake.base_url, faq=FAQ, handoff_keywords=HANDOFF_KEYWORDS,
                            delivery_max_retries=2, voice_download_retries=1)
        try:
            yield VoiceStack(stack, fake, EspeakSynthesizer())
        finally:
            stack.close()
            forget_tokens(rds)


def forget_tokens(redis_url: str | None) -> None:
    """Drop the WeChat access tokens cached in the shared Redis (the embedded stacks keep theirs in their own files)."""
    if redis_url is not None:
        with redis.Redis.from_url(redis_url) as r:
            for key in r.scan_iter("kefu:kv:wxtoken:*"):
                r.delete(key)


def voice_xml(openid: str, media_id: str, msgid: int) -> str:
    return wp.text_xml(openid, "", msgid=msgid, kind="voice",
                       extra=f"<MediaId><![CDATA[{media_id}]]></MediaId><Format><![CDATA[amr]]></Format>")


# ---- official account --------------------------------------------------------------------------

def test_official_account_voice_is_downloaded_transcribed_and_answered_by_the_model(vs: VoiceStack) -> None:
    openid = "o-voice-okay"
    vs.fake.add_media("MP-OKAY", vs.amr("okay"), app=wp.APPID)
    cb = wp.callback(voice_xml(openid, "MP-OKAY", 9001), mode="aes")
    started = time.monotonic()
    r = vs.post(cb, "/v1/wechat/shop")
    assert (r.status_code, r.text) == (200, "success")  # acknowledged at once, nothing downloaded yet
    assert time.monotonic() - started < 2.0
    wait_for(lambda: vs.sent("custom_send", openid), timeout=60)
    row = vs.inbound("wechat_mp", "9001")
    assert (row.kind, row.media_id, row.status) == ("voice", "MP-OKAY", "answered")
    assert row.text == "okay"  # pocketsphinx's transcription of espeak-ng's "okay", through AMR-NB
    wait_for(lambda: "dispatched" in vs.kinds(row.id))
    assert vs.kinds(row.id) == ["received", "queued", "transcribed", "generation_started", "generation_finished",
                                "reply_stored", "send_attempted", "dispatched"]
    transcribed = next(e for e in vs.audit(row.id) if e.kind == "transcribed")
    detail = transcribed.detail
    assert detail["format"] == "amr-nb" and detail["chars"] == len(row.text) and 500 < detail["duration_ms"] < 1500
    assert all(isinstance(detail[k], int) for k in ("download_ms", "decode_ms", "recognize_ms", "media_bytes"))
    assert row.intent is not None and detail["intent"] == row.intent  # labelled once transcribed (models.intents)
    assert all("okay" not in json.dumps(e.detail) for e in vs.audit(row.id))  # the audit log holds no text
    assert vs.reply(row.id).source in ("model", "fallback")
    downloads = [c for c in vs.fake.calls if c["endpoint"] == "media_get"]
    assert [c["query"]["media_id"] for c in downloads] == ["MP-OKAY"]


def test_official_account_voice_asking_for_a_person_is_passed_to_its_staff(vs: VoiceStack) -> None:
    """Decided in the worker, after the callback's passive reply is long gone: the notice (asking the customer to
    send their question) goes out as a customer-service message and their next message is passed to the staff."""
    openid = "o-voice-hello"
    vs.fake.add_media("MP-HELLO", vs.amr("hello"), app=wp.APPID)  # "hello" is a hand-off keyword in this stack
    assert vs.post(wp.callback(voice_xml(openid, "MP-HELLO", 9050)), "/v1/wechat/shop").text == "success"
    wait_for(lambda: vs.sent("custom_send", openid), timeout=60)
    notices = settled(lambda: [m["content"] for m in vs.sent("custom_send", openid)])
    assert notices == [WeChatAccount.model_fields["handoff_next_message_reply"].default]  # "send your question"
    row = vs.inbound("wechat_mp", "9050")
    assert (row.text, vs.reply(row.id).source, row.intent) == ("hello", "handoff", "ask_for_person")
    wait_for(lambda: "dispatched" in vs.kinds(row.id))
    assert vs.kinds(row.id) == ["received", "queued", "transcribed", "reply_stored", "send_attempted", "dispatched"]
    later = vs.post(wp.callback(wp.text_xml(openid, "我的订单呢", msgid=9051), mode="raw"), "/v1/wechat/shop")
    assert "transfer_customer_service" in later.text  # the staff take it from here
    assert vs.inbound("wechat_mp", "9051").status == "human"


@pytest.mark.parametrize(("media", "reason"), [(None, "40007"), (b"<html>not a voice</html>", "undecodable")],
                         ids=["expired-media-id", "undecodable-file"])
def test_voice_that_cannot_be_had_gets_the_unclear_reply(vs: VoiceStack, media: bytes | None, reason: str) -> None:
    openid, msgid = f"o-voice-{reason}", 9100 if media is None else 9101
    media_id = f"MP-{reason.upper()}"
    if media is not None:
        vs.fake.add_media(media_id, media, app=wp.APPID)
    assert vs.post(wp.callback(voice_xml(openid, media_id, msgid)), "/v1/wechat/shop").text == "success"
    wait_for(lambda: vs.sent("custom_send", openid), timeout=60)
    assert settled(lambda: [m["content"] for m in vs.sent("custom_send", openid)]) == [UNCLEAR]
    row = vs.inbound("wechat_mp", str(msgid))
    assert (row.text, row.status) == ("[voice]", "answered")
    wait_for(lambda: "dispatched" in vs.kinds(row.id))
    assert vs.kinds(row.id) == ["received", "queued", "transcription_failed", "reply_stored", "send_attempted", "dispatched"]
    failed = next(e for e in vs.audit(row.id) if e.kind == "transcription_failed")
    assert reason in failed.detail["reason"]
    assert vs.reply(row.id).source == "rule"


def test_a_transient_download_failure_is_retried(vs: VoiceStack) -> None:
    openid = "o-voice-retry"
    vs.fake.add_media("MP-RETRY", vs.amr("hello"), app=wp.APPID)
    vs.fake.http_error_next(502, endpoint="media_get")
    assert vs.post(wp.callback(voice_xml(openid, "MP-RETRY", 9200)), "/v1/wechat/shop").text == "success"
    wait_for(lambda: vs.sent("custom_send", openid), timeout=60)
    row = vs.inbound("wechat_mp", "9200")
    assert row.text == "hello"
    assert vs.kinds(row.id)[:4] == ["received", "queued", "transcription_retry", "transcribed"]
    retry = next(e for e in vs.audit(row.id) if e.kind == "transcription_retry")
    assert retry.detail["attempt"] == 1 and "502" in retry.detail["reason"]


def test_a_download_that_keeps_failing_is_given_up_with_the_unclear_reply(vs: VoiceStack) -> None:
    openid = "o-voice-busy"
    vs.fake.add_media("MP-BUSY", vs.amr("hello"), app=wp.APPID)
    vs.fake.fail_next("media_get", -1, times=2)  # system busy, twice: more than voice_download_retries=1
    assert vs.post(wp.callback(voice_xml(openid, "MP-BUSY", 9210)), "/v1/wechat/shop").text == "success"
    wait_for(lambda: vs.sent("custom_send", openid), timeout=60)
    assert settled(lambda: [m["content"] for m in vs.sent("custom_send", openid)]) == [UNCLEAR]
    row = vs.inbound("wechat_mp", "9210")
    wait_for(lambda: "dispatched" in vs.kinds(row.id))
    assert vs.kinds(row.id) == ["received", "queued", "transcription_retry", "transcription_failed", "reply_stored",
                                "send_attempted", "dispatched"]
    failed = next(e for e in vs.audit(row.id) if e.kind == "transcription_failed")
    assert "download failed 2 times" in failed.detail["reason"]


def test_a_text_after_a_voice_waits_for_the_voice_to_be_answered(vs: VoiceStack) -> None:
    openid = "o-voice-order"
    vs.fake.add_media("MP-SLOW", vs.amr("okay"), app=wp.APPID)
    vs.fake.http_error_next(502, endpoint="media_get")  # the voice's download is retried a second later
    assert vs.post(wp.callback(voice_xml(openid, "MP-SLOW", 9300)), "/v1/wechat/shop").text == "success"
    assert vs.post(wp.callback(wp.text_xml(openid, "你好", msgid=9301)), "/v1/wechat/shop").text == "success"
    wait_for(lambda: len(vs.sent("custom_send", openid)) >= 2, timeout=60)
    voice = vs.inbound("wechat_mp", "9300")
    assert "transcription_retry" in vs.kinds(voice.id)  # the voice really was the slow one
    sent = settled(lambda: [m["content"] for m in vs.sent("custom_send", openid)])
    assert len(sent) == 2 and vs.reply(voice.id).text.startswith(str(sent[0]))  # answered first, as it came first


def test_voice_with_recognition_is_not_downloaded(vs: VoiceStack) -> None:
    xml = wp.text_xml("o-voice-recognized", "", msgid=9400, kind="voice",
                      extra="<MediaId><![CDATA[MP-RECOGNIZED]]></MediaId><Format><![CDATA[amr]]></Format>"
                            "<Recognition><![CDATA[我想退货]]></Recognition>")
    assert vs.post(wp.callback(xml), "/v1/wechat/shop").text == "success"
    wait_for(lambda: vs.sent("custom_send", "o-voice-recognized"), timeout=60)
    row = vs.inbound("wechat_mp", "9400")
    assert (row.text, row.media_id) == ("我想退货", None)
    assert not [c for c in vs.fake.calls if c["endpoint"] == "media_get" and c["query"]["media_id"] == "MP-RECOGNIZED"]


# ---- WeCom app and WeChat Customer Service --------------------------------------------------------

def test_wecom_app_voice_is_transcribed_and_answered_by_the_faq(vs: VoiceStack) -> None:
    vs.fake.add_media("WW-YES", vs.amr("yes"), app=wp.CORPID)
    xml = wp.wecom_text_xml("zhangsan", "", msgid=9500, kind="voice",
                            extra="<MediaId><![CDATA[WW-YES]]></MediaId><Format><![CDATA[amr]]></Format>")
    r = vs.post(wp.corp_callback(xml), "/v1/wecom/it")
    assert (r.status_code, r.text) == (200, "")
    wait_for(lambda: vs.sent("message_send", "zhangsan"), timeout=60)
    assert settled(lambda: [m["content"] for m in vs.sent("message_send", "zhangsan")]) == [FAQ[0]["answer"]]
    row = vs.inbound("wecom", "9500")
    assert row.text == "yes" and vs.reply(row.id).source == "faq"
    wait_for(lambda: "dispatched" in vs.kinds(row.id))
    assert vs.kinds(row.id) == ["received", "queued", "transcribed", "reply_stored", "send_attempted", "dispatched"]


def test_kf_voice_asking_for_a_person_is_handed_off(vs: VoiceStack) -> None:
    kfid, user = "wkVoice0001", "wm-voice"
    vs.fake.add_media("KF-HELLO", vs.amr("hello", wideband=True), app=wp.CORPID, filename="KF-HELLO.amr")
    # msgids of our own: the fake numbers kfmsg-000001… afresh in every module, and the PostgreSQL database is shared
    message = vs.fake.queue_kf_messages(kfid, [{"msgid": "kfvoice-1", "external_userid": user, "msgtype": "voice",
                                                "voice": {"media_id": "KF-HELLO"}}])[0]
    r = vs.post(wp.corp_callback(wp.kf_event_xml(kfid)), "/v1/wecom-kf/kf")
    assert (r.status_code, r.text) == (200, "")
    wait_for(lambda: vs.fake.kf_service_state.get((kfid, user)) == 2, timeout=60)
    assert settled(lambda: [m["content"] for m in vs.sent("kf_send_msg", user)]) == ["好的，正在为您转接人工客服，请稍候。"]
    row = vs.inbound("wecom_kf", str(message["msgid"]))
    assert (row.kind, row.text) == ("voice", "hello")
    wait_for(lambda: "dispatched" in vs.kinds(row.id))
    assert vs.kinds(row.id) == ["received", "queued", "transcribed", "reply_stored", "send_attempted", "handed_off",
                                "dispatched"]
    assert next(e for e in vs.audit(row.id) if e.kind == "transcribed").detail["format"] == "amr-wb"
    media_tokens = [c["query"]["access_token"] for c in vs.fake.calls
                    if c["endpoint"] == "media_get" and c["query"]["media_id"] == "KF-HELLO"]
    assert media_tokens and all(t.startswith("WECOM_ACCESS_TOKEN") for t in media_tokens)  # the kf app's token

    downloads = len([c for c in vs.fake.calls if c["endpoint"] == "media_get"])
    later = vs.fake.queue_kf_messages(kfid, [{"msgid": "kfvoice-2", "external_userid": user, "msgtype": "voice",
                                              "voice": {"media_id": "KF-HELLO"}}])[0]
    vs.post(wp.corp_callback(wp.kf_event_xml(kfid)), "/v1/wecom-kf/kf")
    wait_for(lambda: vs.find("wecom_kf", str(later["msgid"])), timeout=60)
    held = vs.inbound("wecom_kf", str(later["msgid"]))
    assert (held.status, held.text) == ("human", "[voice]")  # for the person serving them
    assert settled(lambda: len(vs.sent("kf_send_msg", user))) == 1
    assert len([c for c in vs.fake.calls if c["endpoint"] == "media_get"]) == downloads  # not downloaded


def test_a_transcription_over_the_text_limit_is_cut_told_and_audited(tmp_path: Path, tiny_gguf: Path) -> None:
    """Like a typed text over KEFU_MAX_TEXT_CHARS: the reply starts with the note; the audit has sizes, no text."""
    with FakeWeChat() as fake:
        fake.add_mp_app(wp.APPID, wp.SECRET)
        stack = start_stack("embedded", tmp_path, tiny_gguf, None, None, wechat_accounts=[wp.account()],
                            wechat_api_base=fake.base_url, max_text_chars=2)
        vs = VoiceStack(stack, fake, EspeakSynthesizer())
        try:
            openid = "o-voice-long"
            fake.add_media("MP-LONG", vs.amr("okay"), app=wp.APPID)
            assert vs.post(wp.callback(voice_xml(openid, "MP-LONG", 9101), mode="aes"), "/v1/wechat/shop").text == "success"
            sent = wait_for(lambda: vs.sent("custom_send", openid), timeout=60)
            row = vs.inbound("wechat_mp", "9101")
            assert row.text == "ok"  # "okay", cut to the limit
            assert str(sent[0]["content"]).startswith("（您的消息较长，我们只读取了前 2 个字。）")
            cut = [e.detail for e in vs.audit(row.id) if e.kind == "truncated"]
            assert cut == [{"chars": 4, "kept": 2}]
        finally:
            stack.close()

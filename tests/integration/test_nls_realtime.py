"""Aliyun NLS over the real-time WebSocket protocol against loopback nls-meta and WebSocket gateway servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.speech.base import SpeechError
from channels.speech.nls_fake import FakeNlsMeta, FakeNlsRealtime
from channels.speech.nls_realtime import NlsRealtimeRecognizer, NlsRealtimeSynthesizer
from channels.speech.nls_token import NlsTokens
from channels.telephony.config import PhoneSettings
from models.infra.kv import make_kv
from models.infra.locks import make_locks
from models.settings import Settings

KEY_ID, SECRET, APPKEY = "LTAI-test-key", "test-secret-value", "kefu-appkey"
Nls = tuple[FakeNlsRealtime, NlsTokens]


@pytest.fixture
def nls(tmp_path: Path) -> Iterator[Nls]:
    with FakeNlsMeta(KEY_ID, SECRET) as meta, FakeNlsRealtime(meta, APPKEY) as gateway:
        settings = Settings(data_dir=tmp_path)
        tokens = NlsTokens(make_kv(settings), make_locks(settings), access_key_id=KEY_ID, access_key_secret=SECRET,
                           region="cn-shanghai", endpoint=meta.endpoint, protocol="http")
        yield gateway, tokens


def test_streamed_recognition_sends_call_audio_as_16_khz(nls: Nls) -> None:
    gateway, tokens = nls
    asr = NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY)
    stream = asr.begin(8000)
    for _ in range(50):  # one second of 8 kHz call audio in 20 ms frames, fed while the "caller speaks"
        stream.feed(b"\x01\x00" * 160)
    assert stream.finish() == "我要转人工"
    assert gateway.audio_bytes == [32000]  # one second at 16 kHz, 16-bit
    assert gateway.tasks == ["SpeechTranscriber"]


def test_synthesis_streams_audio_at_the_calls_rate(nls: Nls) -> None:
    gateway, tokens = nls
    tts = NlsRealtimeSynthesizer(tokens, url=gateway.url, appkey=APPKEY)
    assert len(tts.synthesize("您好", 8000)) == 2 * 8000 * 2 * 150 // 1000  # 150 ms of tone per character
    assert len(tts.synthesize("好" * 301, 16000)) == 301 * 16000 * 2 * 150 // 1000  # over the limit: two tasks
    assert gateway.tasks == ["SpeechSynthesizer"] * 3


def test_an_expired_token_is_refreshed_and_the_audio_already_sent_is_replayed(nls: Nls) -> None:
    gateway, tokens = nls
    asr = NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY)
    assert asr.transcribe(bytes(3200), 16000) == "我要转人工"
    gateway.revoke_tokens()  # between two utterances: the next start is refused
    assert asr.transcribe(bytes(3200), 16000) == "我要转人工"
    stream = asr.begin(16000)
    stream.feed(bytes(6400))
    gateway.revoke_tokens()  # in the middle of an utterance: the stop is refused
    stream.feed(bytes(6400))
    assert stream.finish() == "我要转人工"
    assert gateway.meta.issued == ["nls-token-0001", "nls-token-0002", "nls-token-0003"]
    assert gateway.audio_bytes[-1] == 12800  # the new connection got all of the utterance


def test_task_failures_and_an_unreachable_gateway_are_speech_errors(nls: Nls) -> None:
    gateway, tokens = nls
    tts = NlsRealtimeSynthesizer(tokens, url=gateway.url, appkey=APPKEY)
    gateway.fail_next("StartSynthesis")
    with pytest.raises(SpeechError, match="40000000 Gateway:SERVER_ERROR:injected failure"):
        tts.synthesize("您好", 8000)
    with pytest.raises(SpeechError, match="appkey is invalid"):
        NlsRealtimeRecognizer(tokens, url=gateway.url, appkey="wrong").transcribe(bytes(320), 8000)
    gateway.fail_next("StopTranscription")
    with pytest.raises(SpeechError, match="injected"):
        NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY).transcribe(bytes(320), 8000)
    gateway.down = True
    with pytest.raises(SpeechError, match="HTTP 503"):
        tts.synthesize("您好", 8000)
    with pytest.raises(SpeechError, match="unreachable"):
        NlsRealtimeSynthesizer(tokens, url="ws://127.0.0.1:9/ws/v1", appkey=APPKEY).synthesize("您好", 8000)


def test_a_call_on_realtime_nls_hears_the_caller_then_nls_goes_down(tmp_path_factory: pytest.TempPathFactory,
                                                                       tiny_gguf: Path) -> None:
    import time

    from sqlalchemy import select

    from channels.speech.espeak import EspeakSynthesizer
    from models import audit
    from models.tables import ReplyRecord
    from tests.integration.conftest import Stack, start_stack, wait_for

    def audit_kinds(stack: Stack) -> list[str]:
        from models.tables import AuditEvent

        with stack.sessions() as s:
            return list(s.scalars(select(AuditEvent.kind)))
    from channels.telephony.events import Transfer
    from channels.telephony.fake_pbx import PhoneLine

    with FakeNlsMeta(KEY_ID, SECRET) as meta, FakeNlsRealtime(meta, APPKEY, recognized="营业时间是几点") as gateway:
        stack = start_stack("embedded", tmp_path_factory.mktemp("nls-rt-call"), tiny_gguf, None, None,
                            voice_gateways=[{"name": "pbx", "secret": "s"}], speech_provider="nls",
                            nls_access_key_id=KEY_ID, nls_access_key_secret=SECRET, nls_appkey=APPKEY,
                            nls_meta_endpoint=meta.endpoint, nls_meta_protocol="http", nls_ws_url=gateway.url,
                            hotlines=[{"number": "4008001234", "transfer_to": "8001", "greeting": "您好。"}])
        try:
            call = PhoneLine.dial(stack.gateway.ws_url, "s", call_id="nls-rt-1")
            wait_for(lambda: call.audio_ms() >= 300, timeout=30)  # the greeting: 2 characters of the fake's tone
            call.wait_quiet(600)
            speech = EspeakSynthesizer().synthesize("请问营业时间", 8000)
            call.send_audio(speech)
            call.silence(1000)
            wait_for(lambda: audit.REPLY_STORED in audit_kinds(stack), timeout=60)
            assert gateway.tasks.count("SpeechTranscriber") == 1
            # every frame from the start of speech to the end of the utterance went to NLS, as 16 kHz
            assert len(speech) <= gateway.audio_bytes[0] <= 2 * (len(speech) + 16000)
            call.wait_quiet(600)
            gateway.down = True  # NLS fails mid-call: the caller hears an apology (local voice) and a person
            before = time.monotonic()
            call.send_audio(speech)
            call.silence(1000)
            wait_for(lambda: Transfer("8001") in call.actions(), timeout=60)
            assert call.audio_ms(since=before) >= 1000  # the apology was spoken before the transfer
            with stack.sessions() as s:
                handoff = s.scalars(select(ReplyRecord).where(ReplyRecord.source == "handoff")).one()
            assert handoff.text.startswith(stack.settings.section(PhoneSettings).phone_speech_failed)
            assert audit_kinds(stack).count(audit.RECEIVED) == 2
            assert meta.issued == ["nls-token-0001"]  # one token for the whole call
        finally:
            stack.close()

"""Aliyun NLS over the real-time WebSocket protocol against loopback nls-meta and WebSocket gateway servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


@contextmanager
def fake_nls(tmp_path: Path, **gateway: Any) -> Iterator[Nls]:
    """A fake NLS (``gateway``: FakeNlsRealtime's keywords, e.g. the appkey's ``model_rate``) and tokens from it."""
    with FakeNlsMeta(KEY_ID, SECRET) as meta, FakeNlsRealtime(meta, APPKEY, **gateway) as fake:
        settings = Settings(data_dir=tmp_path)
        tokens = NlsTokens(make_kv(settings), make_locks(settings), access_key_id=KEY_ID, access_key_secret=SECRET,
                           region="cn-shanghai", endpoint=meta.endpoint, protocol="http")
        yield fake, tokens


@pytest.fixture
def nls(tmp_path: Path) -> Iterator[Nls]:
    with fake_nls(tmp_path) as found:  # an appkey bound to a 16 kHz model
        yield found


def one_second_of_call_audio(stream: Any, rate: int = 8000) -> None:
    for _ in range(50):  # in 20 ms frames, fed while the "caller speaks"
        stream.feed(b"\x01\x00" * (rate // 50))


def test_call_audio_goes_to_an_8_khz_model_at_8_khz_as_it_came(tmp_path: Path) -> None:
    with fake_nls(tmp_path, model_rate=8000) as (gateway, tokens):
        asr = NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY)  # KEFU_NLS_ASR_SAMPLE_RATE unset
        stream = asr.begin(8000)
        one_second_of_call_audio(stream)
        assert stream.finish() == "我要转人工"
        assert gateway.rates == [8000]
        assert gateway.audio_bytes == [16000]  # one second at 8 kHz, 16-bit: not upsampled
        assert gateway.tasks == ["SpeechTranscriber"]
        # 16 kHz audio (a WebRTC caller) to the same 8 kHz model: the setting says so, and it is downsampled
        asr = NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY, sample_rate=8000)
        assert asr.transcribe(bytes(32000), 16000) == "我要转人工"
        assert gateway.rates == [8000, 8000] and gateway.audio_bytes[-1] == 16000


def test_a_16_khz_model_gets_call_audio_upsampled_when_the_setting_says_16000(nls: Nls) -> None:
    gateway, tokens = nls
    asr = NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY, sample_rate=16000)
    stream = asr.begin(8000)
    one_second_of_call_audio(stream)
    assert stream.finish() == "我要转人工"
    assert gateway.rates == [16000]
    assert gateway.audio_bytes == [32000]  # one second at 16 kHz, 16-bit
    # audio at a rate no model has (22,050 Hz) goes at 16 kHz when the setting is unset
    assert NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY).transcribe(bytes(44100), 22050)
    assert gateway.rates[-1] == 16000 and gateway.audio_bytes[-1] == 32000


def test_a_rate_the_appkeys_model_was_not_built_for_is_nls_own_refusal(tmp_path: Path) -> None:
    with fake_nls(tmp_path) as (gateway, tokens):  # 16 kHz model, 8 kHz call, setting unset: NLS says no
        stream = NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY).begin(8000)
        one_second_of_call_audio(stream)
        with pytest.raises(SpeechError, match=r"41010101 UNSUPPORTED_SAMPLE_RATE:sample_rate 8000 .* 16000 Hz model"):
            stream.finish()
        assert gateway.rates == [] and gateway.audio_bytes == []  # refused at the start: nothing recognized
    with fake_nls(tmp_path, model_rate=8000) as (gateway, tokens):
        asr = NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY, sample_rate=16000)  # the wrong setting
        with pytest.raises(SpeechError, match="41010101 UNSUPPORTED_SAMPLE_RATE"):
            asr.transcribe(bytes(3200), 8000)


def test_synthesis_streams_audio_at_the_calls_rate(nls: Nls) -> None:
    gateway, tokens = nls
    gateway.speed = 1000.0  # 45 s of audio below: not at the fake's usual 4x real time
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
        NlsRealtimeRecognizer(tokens, url=gateway.url, appkey=APPKEY).transcribe(bytes(640), 16000)
    gateway.down = True
    with pytest.raises(SpeechError, match="HTTP 503"):
        tts.synthesize("您好", 8000)
    with pytest.raises(SpeechError, match="unreachable"):
        NlsRealtimeSynthesizer(tokens, url="ws://127.0.0.1:9/ws/v1", appkey=APPKEY).synthesize("您好", 8000)


def test_the_first_audio_of_a_sentence_comes_before_nls_has_finished_it(nls: Nls) -> None:
    gateway, tokens = nls  # first audio after 60 ms, then 100 ms frames at 4x real time
    tts = NlsRealtimeSynthesizer(tokens, url=gateway.url, appkey=APPKEY)
    sentence = "您好，欢迎致电优选商城客服中心，请问有什么可以帮您？"  # 25 characters: 3.75 s of the fake's tone
    started = time.monotonic()
    arrivals, chunks = [], []
    for chunk in tts.synthesize_stream(sentence, 8000):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    finished = time.monotonic() - started
    assert len(chunks) >= 10 and all(len(c) % 2 == 0 for c in chunks)
    assert len(b"".join(chunks)) == len(sentence) * 8000 * 2 * 150 // 1000
    assert finished - arrivals[0] >= 0.5  # the caller could hear the first 100 ms long before the last
    assert arrivals[0] < finished / 2
    assert len(tts.synthesize("您好", 8000)) == 2 * 8000 * 2 * 150 // 1000  # the whole sentence, as before


def test_a_stream_refreshes_a_rejected_token_before_its_first_audio(nls: Nls) -> None:
    gateway, tokens = nls
    tts = NlsRealtimeSynthesizer(tokens, url=gateway.url, appkey=APPKEY)
    assert b"".join(tts.synthesize_stream("您好", 8000))
    gateway.revoke_tokens()
    assert len(b"".join(tts.synthesize_stream("您好", 8000))) == 2 * 8000 * 2 * 150 // 1000
    assert gateway.meta.issued == ["nls-token-0001", "nls-token-0002"]


def test_the_fallback_voice_speaks_only_when_nls_failed_before_any_audio(tmp_path: Path) -> None:
    from channels.speech.espeak import EspeakSynthesizer
    from channels.speech.fallback import FallbackSynthesizer

    # frames every 400 ms, and a client that waits 200 ms: it fails after the first frame went out
    with fake_nls(tmp_path, first_audio_ms=0, speed=0.25) as (gateway, tokens):
        local = EspeakSynthesizer()
        voice = FallbackSynthesizer(NlsRealtimeSynthesizer(tokens, url=gateway.url, appkey=APPKEY, timeout_s=0.2),
                                    local, cooldown_s=3600)
        heard: list[bytes] = []
        with pytest.raises(SpeechError, match="NLS sent nothing"):
            heard.extend(voice.synthesize_stream("您好，请稍等", 8000))
        assert len(heard) == 1  # 100 ms of NLS's voice, then an error: not the sentence again in another voice
        assert b"".join(voice.synthesize_stream("您好", 8000)) == local.synthesize("您好", 8000)  # cooling down
        voice._skip_until = 0.0
        gateway.fail_next("StartSynthesis")  # refused before any audio: the local voice says all of it
        assert b"".join(voice.synthesize_stream("您好", 8000)) == local.synthesize("您好", 8000)
        assert gateway.tasks == ["SpeechSynthesizer"]  # the refused one never started


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

    with FakeNlsMeta(KEY_ID, SECRET) as meta, \
            FakeNlsRealtime(meta, APPKEY, recognized="营业时间是几点", model_rate=8000) as gateway:
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
            # every frame from the start of speech to the end of the utterance went to NLS, at the call's 8 kHz
            assert gateway.rates == [8000]
            assert len(speech) <= gateway.audio_bytes[0] <= len(speech) + 16000
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

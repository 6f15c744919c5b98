"""Aliyun NLS REST recognition and synthesis against loopback nls-meta and speech-gateway servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from channels.speech.base import SpeechError
from channels.speech.nls_fake import FakeNlsGateway, FakeNlsMeta
from channels.speech.nls_rest import NlsRestRecognizer, NlsRestSynthesizer
from channels.speech.nls_token import NlsTokens
from models.infra.kv import make_kv
from models.infra.locks import make_locks
from models.settings import Settings

KEY_ID, SECRET, APPKEY = "LTAI-test-key", "test-secret-value", "kefu-appkey"


@pytest.fixture
def nls(tmp_path: Path) -> Iterator[tuple[FakeNlsGateway, NlsTokens]]:
    with FakeNlsMeta(KEY_ID, SECRET) as meta, FakeNlsGateway(meta, APPKEY) as gateway:
        settings = Settings(data_dir=tmp_path)
        tokens = NlsTokens(make_kv(settings), make_locks(settings), access_key_id=KEY_ID, access_key_secret=SECRET,
                           region="cn-shanghai", endpoint=meta.endpoint, protocol="http")
        yield gateway, tokens


def test_recognition_and_synthesis(nls: tuple[FakeNlsGateway, NlsTokens]) -> None:
    gateway, tokens = nls  # an appkey bound to a 16 kHz model
    asr = NlsRestRecognizer(tokens, gateway=gateway.url, appkey=APPKEY, sample_rate=16000)
    tts = NlsRestSynthesizer(tokens, gateway=gateway.url, appkey=APPKEY)
    assert asr.transcribe(bytes(8000), 8000) == "我要转人工"  # 8 kHz call audio is sent as 16 kHz, as configured
    assert (gateway.rates, gateway.audio_bytes) == ([16000], [16000])
    audio = tts.synthesize("您好", 8000)
    assert len(audio) == 2 * 8000 * 150 // 1000 * 2  # two characters of the fake's tone at 8 kHz
    chunks = list(tts.synthesize_stream("您好", 8000))  # the body as it arrives, in whole samples
    assert b"".join(chunks) == audio and all(len(c) % 2 == 0 for c in chunks)
    asr.close()
    tts.close()


def test_call_audio_goes_at_its_own_rate_unless_configured_and_nls_refuses_a_mismatch(tmp_path: Path) -> None:
    with FakeNlsMeta(KEY_ID, SECRET) as meta, FakeNlsGateway(meta, APPKEY, model_rate=8000) as gateway:
        settings = Settings(data_dir=tmp_path)
        tokens = NlsTokens(make_kv(settings), make_locks(settings), access_key_id=KEY_ID, access_key_secret=SECRET,
                           region="cn-shanghai", endpoint=meta.endpoint, protocol="http")
        asr = NlsRestRecognizer(tokens, gateway=gateway.url, appkey=APPKEY)  # KEFU_NLS_ASR_SAMPLE_RATE unset
        assert asr.transcribe(bytes(8000), 8000) == "我要转人工"
        assert (gateway.rates, gateway.audio_bytes) == ([8000], [8000])  # half a second at 8 kHz, not upsampled
        with pytest.raises(SpeechError, match="41010101 UNSUPPORTED_SAMPLE_RATE:sample_rate 16000"):
            asr.transcribe(bytes(16000), 16000)  # 16 kHz audio, unset: sent at 16 kHz, which this model refuses
        configured = NlsRestRecognizer(tokens, gateway=gateway.url, appkey=APPKEY, sample_rate=8000)
        assert configured.transcribe(bytes(16000), 16000) == "我要转人工"  # downsampled to the model's rate
        assert (gateway.rates, gateway.audio_bytes) == ([8000, 16000, 8000], [8000, 8000])
        asr.close()
        configured.close()


def test_a_token_expiring_mid_call_is_refreshed_and_the_call_goes_on(nls: tuple[FakeNlsGateway, NlsTokens]) -> None:
    gateway, tokens = nls
    asr = NlsRestRecognizer(tokens, gateway=gateway.url, appkey=APPKEY)
    assert asr.transcribe(bytes(3200), 16000)
    gateway.revoke_tokens()  # the platform no longer accepts the cached token
    assert asr.transcribe(bytes(3200), 16000) == "我要转人工"
    assert gateway.meta.issued == ["nls-token-0001", "nls-token-0002"]
    tts = NlsRestSynthesizer(tokens, gateway=gateway.url, appkey=APPKEY)
    gateway.revoke_tokens()  # a stream asks again with a fresh token: the refusal is JSON, no audio went out
    assert len(b"".join(tts.synthesize_stream("您好", 8000))) == 2 * 8000 * 150 // 1000 * 2
    assert gateway.meta.issued == ["nls-token-0001", "nls-token-0002", "nls-token-0003"]
    asr.close()
    tts.close()


def test_nls_down_is_a_speech_error(nls: tuple[FakeNlsGateway, NlsTokens]) -> None:
    gateway, tokens = nls
    gateway.down = True
    tts = NlsRestSynthesizer(tokens, gateway=gateway.url, appkey=APPKEY)
    with pytest.raises(SpeechError, match="503"):
        tts.synthesize("您好", 8000)
    with pytest.raises(SpeechError, match="appkey"):
        gateway.down = False
        NlsRestRecognizer(tokens, gateway=gateway.url, appkey="wrong").transcribe(bytes(320), 8000)
    tts.close()


def test_a_call_on_nls_hears_the_caller_and_transfers(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> None:
    from channels.speech.espeak import EspeakSynthesizer
    from channels.telephony.events import Transfer
    from channels.telephony.fake_pbx import PhoneLine
    from tests.integration.conftest import start_stack, wait_for

    with FakeNlsMeta(KEY_ID, SECRET) as meta, \
            FakeNlsGateway(meta, APPKEY, recognized="我要转人工", model_rate=8000) as gateway:
        stack = start_stack("embedded", tmp_path_factory.mktemp("nls-call"), tiny_gguf, None, None,
                            voice_gateways=[{"name": "pbx", "secret": "s"}], speech_provider="nls", nls_mode="rest",
                            nls_access_key_id=KEY_ID, nls_access_key_secret=SECRET, nls_appkey=APPKEY,
                            nls_meta_endpoint=meta.endpoint, nls_meta_protocol="http", nls_gateway=gateway.url,
                            hotlines=[{"number": "4008001234", "transfer_to": "8001", "greeting": "您好。"}])
        try:
            call = PhoneLine.dial(stack.gateway.ws_url, "s", call_id="nls-1")
            wait_for(lambda: call.audio_ms() >= 100, timeout=30)  # the greeting, synthesized by NLS
            call.wait_quiet(600)
            call.send_audio(EspeakSynthesizer().synthesize("请帮我转人工", 8000))
            call.silence(1000)
            wait_for(lambda: Transfer("8001") in call.actions(), timeout=60)
            assert "/stream/v1/asr" in gateway.requests and "/stream/v1/tts" in gateway.requests
            assert set(gateway.rates) == {8000}  # the call's 8 kHz audio, as it came
            assert meta.issued == ["nls-token-0001"]  # one token for the whole call
        finally:
            stack.close()

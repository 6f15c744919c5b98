"""The configured speech providers, built from settings: one place for the phone and WeChat voice messages.

``KEFU_SPEECH_PROVIDER=local`` → espeak-ng, and a sherpa-onnx recognizer when
``KEFU_LOCAL_ASR_MODEL_DIR`` is set, else pocketsphinx (English only).
``KEFU_SPEECH_PROVIDER=nls`` → Aliyun NLS over the real-time WebSocket protocol (``KEFU_NLS_MODE=realtime``)
or the REST gateway (``rest``), with espeak-ng as the fallback voice; recognition audio goes at
``KEFU_NLS_ASR_SAMPLE_RATE`` (the appkey's model's rate), else at the audio's own rate.
Building a local recognizer loads a model, so callers keep one :class:`SpeechProviders` per process; the
recognizer and the voice are built separately, on first use (a worker transcribing WeChat voice messages
needs no voice).
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING

from channels.speech.base import Recognizer, Synthesizer

if TYPE_CHECKING:
    from channels.speech.nls_token import NlsTokens
    from models.infra.kv import KV
    from models.infra.locks import Locks
    from models.settings import Settings


def local_recognizer(settings: Settings) -> Recognizer:
    if settings.local_asr_model_dir is not None:
        from channels.speech.sherpa_asr import SherpaOnnxRecognizer

        return SherpaOnnxRecognizer(settings.local_asr_model_dir)
    from channels.speech.pocketsphinx_asr import PocketSphinxRecognizer

    return PocketSphinxRecognizer()


class SpeechProviders:
    """The recognizer and the voice, each built on first use and then shared (thread-safe)."""

    def __init__(self, settings: Settings, kv: KV, locks: Locks) -> None:
        self._settings, self._kv, self._locks = settings, kv, locks
        self._lock = threading.Lock()

    def get(self) -> tuple[Recognizer, Synthesizer]:
        return self.recognizer(), self.synthesizer()

    def recognizer(self) -> Recognizer:
        with self._lock:
            return self._recognizer

    def synthesizer(self) -> Synthesizer:
        with self._lock:
            return self._synthesizer

    @cached_property
    def _tokens(self) -> NlsTokens:
        from channels.speech.nls_token import NlsTokens

        s = self._settings
        assert s.nls_access_key_id and s.nls_access_key_secret  # checked at start-up
        return NlsTokens(self._kv, self._locks, access_key_id=s.nls_access_key_id,
                         access_key_secret=s.nls_access_key_secret.get_secret_value(),
                         region=s.nls_region, endpoint=s.nls_meta_endpoint, protocol=s.nls_meta_protocol)

    @cached_property
    def _recognizer(self) -> Recognizer:
        s = self._settings
        if s.speech_provider != "nls":
            return local_recognizer(s)
        assert s.nls_appkey
        if s.nls_mode == "realtime":
            from channels.speech.nls_realtime import NlsRealtimeRecognizer

            return NlsRealtimeRecognizer(self._tokens, url=s.nls_ws_url, appkey=s.nls_appkey,
                                         sample_rate=s.nls_asr_sample_rate)
        from channels.speech.nls_rest import NlsRestRecognizer

        return NlsRestRecognizer(self._tokens, gateway=s.nls_gateway, appkey=s.nls_appkey,
                                 sample_rate=s.nls_asr_sample_rate)

    @cached_property
    def _synthesizer(self) -> Synthesizer:
        from channels.speech.espeak import EspeakSynthesizer

        s = self._settings
        if s.speech_provider != "nls":
            return EspeakSynthesizer()
        from channels.speech.fallback import FallbackSynthesizer

        assert s.nls_appkey
        primary: Synthesizer
        if s.nls_mode == "realtime":
            from channels.speech.nls_realtime import NlsRealtimeSynthesizer

            primary = NlsRealtimeSynthesizer(self._tokens, url=s.nls_ws_url, appkey=s.nls_appkey, voice=s.nls_voice)
        else:
            from channels.speech.nls_rest import NlsRestSynthesizer

            primary = NlsRestSynthesizer(self._tokens, gateway=s.nls_gateway, appkey=s.nls_appkey, voice=s.nls_voice)
        return FallbackSynthesizer(primary, EspeakSynthesizer())

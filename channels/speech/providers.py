"""The configured speech providers, built from settings: one place for the phone and WeChat voice messages.

``KEFU_SPEECH_PROVIDER=local`` → espeak-ng, and a sherpa-onnx recognizer when
``KEFU_LOCAL_ASR_MODEL_DIR`` is set, else pocketsphinx (English only).
``KEFU_SPEECH_PROVIDER=nls`` → Aliyun NLS over the real-time WebSocket protocol (``KEFU_NLS_MODE=realtime``)
or the REST gateway (``rest``), with espeak-ng as the fallback voice. Building a local recognizer
loads a model, so callers build once and keep the result (:class:`SpeechProviders`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from channels.speech.base import Recognizer, Synthesizer

if TYPE_CHECKING:
    from models.kv import KV
    from models.settings import Settings


def build(settings: Settings, kv: KV) -> tuple[Recognizer, Synthesizer]:
    from channels.speech.espeak import EspeakSynthesizer

    s = settings
    if s.speech_provider == "nls":
        from channels.speech.fallback import FallbackSynthesizer
        from channels.speech.nls_token import NlsTokens
        from models.locks import make_locks

        assert s.nls_access_key_id and s.nls_access_key_secret and s.nls_appkey  # checked at start-up
        tokens = NlsTokens(kv, make_locks(s), access_key_id=s.nls_access_key_id,
                           access_key_secret=s.nls_access_key_secret.get_secret_value(),
                           region=s.nls_region, endpoint=s.nls_meta_endpoint, protocol=s.nls_meta_protocol)
        recognizer: Recognizer
        synthesizer: Synthesizer
        if s.nls_mode == "realtime":
            from channels.speech.nls_realtime import NlsRealtimeRecognizer, NlsRealtimeSynthesizer

            recognizer = NlsRealtimeRecognizer(tokens, url=s.nls_ws_url, appkey=s.nls_appkey)
            synthesizer = NlsRealtimeSynthesizer(tokens, url=s.nls_ws_url, appkey=s.nls_appkey, voice=s.nls_voice)
        else:
            from channels.speech.nls_rest import NlsRestRecognizer, NlsRestSynthesizer

            recognizer = NlsRestRecognizer(tokens, gateway=s.nls_gateway, appkey=s.nls_appkey)
            synthesizer = NlsRestSynthesizer(tokens, gateway=s.nls_gateway, appkey=s.nls_appkey, voice=s.nls_voice)
        return recognizer, FallbackSynthesizer(synthesizer, EspeakSynthesizer())
    return local_recognizer(settings), EspeakSynthesizer()


def local_recognizer(settings: Settings) -> Recognizer:
    if settings.local_asr_model_dir is not None:
        from channels.speech.sherpa_asr import SherpaOnnxRecognizer

        return SherpaOnnxRecognizer(settings.local_asr_model_dir)
    from channels.speech.pocketsphinx_asr import PocketSphinxRecognizer

    return PocketSphinxRecognizer()


class SpeechProviders:
    """Built on first use, then shared (thread-safe)."""

    def __init__(self, settings: Settings, kv: KV) -> None:
        self._settings, self._kv = settings, kv
        self._built: tuple[Recognizer, Synthesizer] | None = None
        self._lock = threading.Lock()

    def get(self) -> tuple[Recognizer, Synthesizer]:
        with self._lock:
            if self._built is None:
                self._built = build(self._settings, self._kv)
            return self._built

"""Local speech recognition with pocketsphinx (PyPI ``pocketsphinx``), which ships an **English**
acoustic and language model only. There is no Mandarin model in any registry package; operators
who need Mandarin offline point Kefu at a vosk or sherpa-onnx model directory, or use Aliyun NLS.

Accuracy is modest (it is a 2010s HMM recognizer): good for "yes", "agent", digits and short
phrases, poor for free speech. Audio is resampled to the model's 16 kHz.
"""

from __future__ import annotations

import threading
from typing import Any

from channels.speech.audio import resample
from channels.speech.base import SpeechError

MODEL_RATE = 16000


class PocketSphinxRecognizer:
    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise SpeechError("pocketsphinx is not installed") from exc
        self._decoder: Any = Decoder(samprate=MODEL_RATE, loglevel="FATAL")
        self._lock = threading.Lock()  # one decoder, one utterance at a time

    def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        audio = resample(pcm, sample_rate, MODEL_RATE)
        with self._lock:
            try:
                self._decoder.start_utt()
                self._decoder.process_raw(audio, full_utt=True)
                self._decoder.end_utt()
            except RuntimeError as exc:
                raise SpeechError(f"pocketsphinx failed: {exc}") from None
            hypothesis = self._decoder.hyp()
        return str(hypothesis.hypstr).strip() if hypothesis is not None else ""

"""Local speech recognition with pocketsphinx (PyPI ``pocketsphinx``), which ships an **English**
acoustic and language model only. There is no Mandarin model in any registry package; operators
who need Mandarin offline point Kefu at a vosk or sherpa-onnx model directory, or use Aliyun NLS.

Accuracy is modest (it is a 2010s HMM recognizer): good for "yes", "agent", digits and short
phrases, poor for free speech. Audio is resampled to the model's 16 kHz. The second, flat-lexicon
search pass is off: it made ``end_utt`` take ~90 ms instead of ~10 ms after the caller stopped,
for no better text on our phone questions (measured in ``docs/BENCHMARKS.md``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from channels.speech.audio import resample
from channels.speech.base import SpeechError, Transcription

MODEL_RATE = 16000
# maxhmmpf/maxwpf cap the active HMMs and word exits per frame: half the CPU (real-time factor 0.30 → 0.14 on six
# espeak-ng phone questions, the same or better text; docs/BENCHMARKS.md), which is what lets one core hold
# several callers speaking at once.
DECODER_OPTIONS: dict[str, Any] = {"samprate": MODEL_RATE, "loglevel": "FATAL", "fwdflat": False,
                                   "maxhmmpf": 5000, "maxwpf": 10}


class PocketSphinxRecognizer:
    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise SpeechError("pocketsphinx is not installed") from exc
        self._decoder_class = Decoder
        self._decoder: Any = Decoder(**DECODER_OPTIONS)
        self._lock = threading.Lock()  # one decoder, one utterance at a time
        self._idle: list[Any] = []  # decoders for streaming transcriptions, one per concurrent utterance
        self._idle_lock = threading.Lock()

    def begin(self, sample_rate: int) -> StreamingTranscription:
        """Recognize while the caller is still speaking: feed frames as they come, ``finish()`` at the end.

        Returns at once (it runs on the call's event loop): a decoder is taken from the pool, or
        built (~0.1 s of model loading), on the transcription's own thread.
        """
        return StreamingTranscription(self._acquire, sample_rate, self._release)

    def _acquire(self) -> Any:
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        return self._decoder_class(**DECODER_OPTIONS)

    @property
    def idle_decoders(self) -> int:
        return len(self._idle)

    def _release(self, decoder: Any) -> None:
        with self._idle_lock:
            self._idle.append(decoder)

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


class StreamingTranscription(Transcription):
    """One utterance decoded as the audio arrives; ``finish()`` has little left to do."""

    def __init__(self, acquire: Callable[[], Any], sample_rate: int, release: Callable[[Any], None]) -> None:
        self._acquire, self._release = acquire, release
        super().__init__(sample_rate)

    def _recognize(self) -> str:
        try:
            decoder = self._acquire()
            decoder.start_utt()
            while (pcm := self._next_frame()) is not None:
                decoder.process_raw(resample(pcm, self.sample_rate, MODEL_RATE), full_utt=False)
            decoder.end_utt()
            hypothesis = decoder.hyp()
        except RuntimeError as exc:  # a decoder left mid-utterance is not reused
            raise SpeechError(f"pocketsphinx failed: {exc}") from None
        self._release(decoder)
        return str(hypothesis.hypstr).strip() if hypothesis is not None else ""

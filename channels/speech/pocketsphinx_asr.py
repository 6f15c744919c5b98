"""Local speech recognition with pocketsphinx (PyPI ``pocketsphinx``), which ships an **English**
acoustic and language model only. There is no Mandarin model in any registry package; operators
who need Mandarin offline point Kefu at a vosk or sherpa-onnx model directory, or use Aliyun NLS.

Accuracy is modest (it is a 2010s HMM recognizer): good for "yes", "agent", digits and short
phrases, poor for free speech. Audio is resampled to the model's 16 kHz.
"""

from __future__ import annotations

import queue
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
        self._decoder_class = Decoder
        self._decoder: Any = Decoder(samprate=MODEL_RATE, loglevel="FATAL")
        self._lock = threading.Lock()  # one decoder, one utterance at a time
        self._idle: list[Any] = []  # decoders for streaming transcriptions, one per concurrent utterance
        self._idle_lock = threading.Lock()

    def begin(self, sample_rate: int) -> StreamingTranscription:
        """Recognize while the caller is still speaking: feed frames as they come, ``finish()`` at the end."""
        with self._idle_lock:
            decoder = self._idle.pop() if self._idle else None
        if decoder is None:
            decoder = self._decoder_class(samprate=MODEL_RATE, loglevel="FATAL")
        return StreamingTranscription(decoder, sample_rate, self._release)

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


class StreamingTranscription:
    """One utterance decoded on its own thread as the audio arrives; ``finish()`` has little left to do."""

    def __init__(self, decoder: Any, sample_rate: int, release: Any) -> None:
        self._decoder, self._rate, self._release = decoder, sample_rate, release
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._text = ""
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="asr-stream", daemon=True)
        self._thread.start()

    def feed(self, pcm: bytes) -> None:
        self._frames.put(pcm)

    def finish(self, timeout: float = 30.0) -> str:
        self._frames.put(None)
        self._thread.join(timeout)
        if self._error is not None:
            raise SpeechError(self._error)
        return self._text

    def _run(self) -> None:
        try:
            self._decoder.start_utt()
            while (pcm := self._frames.get()) is not None:
                self._decoder.process_raw(resample(pcm, self._rate, MODEL_RATE), full_utt=False)
            self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
            self._text = str(hypothesis.hypstr).strip() if hypothesis is not None else ""
        except RuntimeError as exc:
            self._error = f"pocketsphinx failed: {exc}"
        finally:
            self._release(self._decoder)

"""The speech provider interfaces, their errors, and the base of a streaming transcription."""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Protocol


class SpeechError(RuntimeError):
    """A speech provider failed (unreachable, refused, broken audio); the caller decides what to say."""


class Recognizer(Protocol):
    def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        """The text of one utterance of 16-bit mono PCM ("" when nothing was recognized)."""
        ...


class Synthesizer(Protocol):
    def synthesize(self, text: str, sample_rate: int) -> bytes:
        """16-bit mono PCM at ``sample_rate`` speaking ``text``."""
        ...


def speech_chunks(synthesizer: Synthesizer, text: str, sample_rate: int) -> Iterator[bytes]:
    """``synthesizer.synthesize_stream`` where it has one (audio as it is produced), else its ``synthesize`` as one
    chunk. Blocking."""
    stream = getattr(synthesizer, "synthesize_stream", None)
    if stream is not None:
        yield from stream(text, sample_rate)
    else:
        yield synthesizer.synthesize(text, sample_rate)


class Transcription(ABC):
    """One utterance recognized on its own thread while the audio arrives (a recognizer's ``begin()``).

    ``feed`` never blocks (the call's event loop calls it for every frame); ``finish`` marks the end of
    the utterance and waits for the text, raising :class:`SpeechError` when recognition failed or did
    not complete within ``timeout``.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._ended = False
        self._text = ""
        self._error: SpeechError | None = None
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()

    def feed(self, pcm: bytes) -> None:
        self._frames.put(pcm)

    def close(self) -> None:
        """No more audio: the end of the utterance (or of the call). Never blocks; safe to call twice."""
        self._frames.put(None)

    def finish(self, timeout: float = 30.0) -> str:
        self.close()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise SpeechError(f"recognition did not complete within {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self._text

    def _next_frame(self) -> bytes | None:
        """The next frame the caller fed, or None once the utterance has ended."""
        if self._ended:
            return None
        pcm = self._frames.get()
        self._ended = pcm is None
        return pcm

    def _run(self) -> None:
        try:
            self._text = self._recognize()
        except SpeechError as exc:
            self._error = exc
        except Exception as exc:  # a KV or lock error under the token, a malformed answer: still a failure
            self._error = SpeechError(f"recognition failed: {type(exc).__name__}: {exc}")

    @abstractmethod
    def _recognize(self) -> str:
        """Consume frames with :meth:`_next_frame` until it returns None; the utterance's text."""

"""The two speech provider interfaces and their errors."""

from __future__ import annotations

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

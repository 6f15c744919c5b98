"""A synthesizer that never leaves a caller in silence: the primary (e.g. Aliyun NLS), else a local one.

After the primary fails, the backup speaks everything for ``cooldown_s`` before the primary is tried
again: a dead cloud service would otherwise cost every sentence of every call its connect timeout.

Streaming (:meth:`FallbackSynthesizer.synthesize_stream`): the primary's chunks as they come; if it fails
before its first chunk, the backup speaks the whole sentence instead. If it fails after audio went out,
the error is raised (the caller already heard part of the sentence in one voice: finishing it in another,
from the start, would repeat it) and the cooldown starts all the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from channels.speech.base import SpeechError, Synthesizer, speech_chunks

log = logging.getLogger(__name__)


class FallbackSynthesizer:
    def __init__(self, primary: Synthesizer, backup: Synthesizer, *, cooldown_s: float = 30.0) -> None:
        self.primary, self.backup, self.cooldown_s = primary, backup, cooldown_s
        self._skip_until = 0.0  # one float, written whole: no lock needed

    def synthesize(self, text: str, sample_rate: int) -> bytes:
        if time.monotonic() >= self._skip_until:
            try:
                return self.primary.synthesize(text, sample_rate)
            except Exception as exc:  # NLS refusing, or the KV store under its token failing: the caller still hears
                self._failed(exc)
        return self.backup.synthesize(text, sample_rate)

    def synthesize_stream(self, text: str, sample_rate: int) -> Iterator[bytes]:
        if time.monotonic() >= self._skip_until:
            started = False
            try:
                for chunk in speech_chunks(self.primary, text, sample_rate):
                    started = started or bool(chunk)
                    yield chunk
                return
            except Exception as exc:
                self._failed(exc)
                if started and isinstance(exc, SpeechError):
                    raise
                if started:
                    raise SpeechError(f"speech synthesis failed mid-sentence: {type(exc).__name__}: {exc}") from exc
        yield from speech_chunks(self.backup, text, sample_rate)

    def _failed(self, exc: Exception) -> None:
        self._skip_until = time.monotonic() + self.cooldown_s
        log.warning("speech synthesis failed (%s: %s); the local voice speaks for the next %.0f s",
                    type(exc).__name__, exc, self.cooldown_s)

"""A synthesizer that never leaves a caller in silence: the primary (e.g. Aliyun NLS), else a local one."""

from __future__ import annotations

import logging

from channels.speech.base import SpeechError, Synthesizer

log = logging.getLogger(__name__)


class FallbackSynthesizer:
    def __init__(self, primary: Synthesizer, backup: Synthesizer) -> None:
        self.primary, self.backup = primary, backup

    def synthesize(self, text: str, sample_rate: int) -> bytes:
        try:
            return self.primary.synthesize(text, sample_rate)
        except SpeechError as exc:
            log.warning("speech synthesis failed (%s); using the local voice", exc)
            return self.backup.synthesize(text, sample_rate)

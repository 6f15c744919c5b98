"""A synthesizer that never leaves a caller in silence: the primary (e.g. Aliyun NLS), else a local one.

After the primary fails, the backup speaks everything for ``cooldown_s`` before the primary is tried
again: a dead cloud service would otherwise cost every sentence of every call its connect timeout.
"""

from __future__ import annotations

import logging
import time

from channels.speech.base import Synthesizer

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
                self._skip_until = time.monotonic() + self.cooldown_s
                log.warning("speech synthesis failed (%s: %s); the local voice speaks for the next %.0f s",
                            type(exc).__name__, exc, self.cooldown_s)
        return self.backup.synthesize(text, sample_rate)

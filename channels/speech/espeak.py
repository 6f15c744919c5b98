"""Local text-to-speech with espeak-ng (Debian package ``espeak-ng``): Mandarin (``cmn``) and English.

The voice follows the text: any CJK character selects Mandarin, otherwise English. Robotic, but it
needs no cloud and no model download, so the phone channel works on the embedded default.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from channels.speech.audio import read_wav, resample
from channels.speech.base import SpeechError

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


class EspeakSynthesizer:
    def __init__(self, *, binary: str = "espeak-ng", speed_wpm: int = 160, mandarin_speed_wpm: int = 260,
                 timeout_s: float = 10.0, mandarin: str = "cmn", english: str = "en-us") -> None:
        path = shutil.which(binary)
        if path is None:
            raise SpeechError(f"{binary} is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
        self._binary, self._timeout = path, timeout_s
        # espeak-ng counts a Mandarin syllable as a word: 260 "words" a minute is a natural pace there
        self._speeds = (mandarin_speed_wpm, speed_wpm)
        self._voices = (mandarin, english)

    def voice_for(self, text: str) -> str:
        return self._voices[0] if _CJK.search(text) else self._voices[1]

    def synthesize(self, text: str, sample_rate: int) -> bytes:
        text = text.strip()
        if not text:
            return b""
        try:
            done = subprocess.run(  # noqa: S603 - fixed binary, text passed as one argument, no shell
                [self._binary, "-v", self.voice_for(text), "-s", str(self._speeds[0 if _CJK.search(text) else 1]),
                 "--stdout", "--", text],
                capture_output=True, timeout=self._timeout, check=True)
        except subprocess.TimeoutExpired:
            raise SpeechError("espeak-ng took too long") from None
        except subprocess.CalledProcessError as exc:
            raise SpeechError(f"espeak-ng failed: {exc.stderr.decode(errors='replace')[:200]}") from None
        pcm, rate = read_wav(done.stdout)
        return resample(pcm, rate, sample_rate)

"""Local text-to-speech with espeak-ng (Debian package ``espeak-ng``): Mandarin (``cmn``) and English.

The voice follows the text: any CJK character selects Mandarin, otherwise English. Robotic, but it
needs no cloud and no model download, so the phone channel works on the embedded default.

:meth:`EspeakSynthesizer.synthesize_stream` reads espeak-ng's WAV from its stdout while it is still
speaking and resamples it chunk by chunk (:class:`~channels.speech.audio.StreamResampler`), so the first
audio of a long sentence is ready before espeak-ng has finished it. ``--stdout`` writes the RIFF and
``data`` sizes as placeholders (0x7ffff024 / 0x7ffff000: it cannot seek back on a pipe), so the header is
parsed chunk by chunk up to ``data`` and the sizes are ignored. Every failure is a
:class:`~channels.speech.base.SpeechError`; a run longer than ``timeout_s`` is killed.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import IO

from channels.speech.audio import StreamResampler
from channels.speech.base import SpeechError

_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
READ_BYTES = 4096  # the most one read takes from espeak-ng's stdout (about 90 ms at its 22,050 Hz)


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
        return b"".join(self.synthesize_stream(text, sample_rate))

    def synthesize_stream(self, text: str, sample_rate: int) -> Iterator[bytes]:
        """16-bit PCM at ``sample_rate`` in chunks of whole samples, as espeak-ng produces it."""
        text = text.strip()
        if not text:
            return
        command = [self._binary, "-v", self.voice_for(text), "-s", str(self._speeds[0 if _CJK.search(text) else 1]),
                   "--stdout", "--", text]
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603 - no shell
        except OSError as exc:
            raise SpeechError(f"espeak-ng could not start: {exc}") from None
        timer = threading.Timer(self._timeout, process.kill)
        timer.start()
        stdout, stderr = process.stdout, process.stderr
        assert isinstance(stdout, io.BufferedReader) and stderr is not None  # pipes, buffered (Popen's default)
        try:
            rate, pending = _wav_header(stdout)
            resampler = StreamResampler(rate, sample_rate)
            while chunk := pending or stdout.read1(READ_BYTES):
                pending = b""
                if out := resampler.feed(chunk):
                    yield out
            if out := resampler.flush():
                yield out
            code = process.wait()
            if code != 0 and not timer.is_alive():  # the timer fired and killed it
                raise SpeechError("espeak-ng took too long")
            if code != 0:
                raise SpeechError(f"espeak-ng failed: {stderr.read().decode(errors='replace')[:200]}")
        finally:  # also when the caller stops listening (barge-in): no espeak-ng is left running
            timer.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
            stdout.close()
            stderr.close()


def _wav_header(stdout: IO[bytes]) -> tuple[int, bytes]:
    """(sample rate, audio bytes read past the header) of the WAV espeak-ng is writing; its sizes are not read."""
    buffer = b""

    def take(count: int) -> bytes:
        nonlocal buffer
        while len(buffer) < count:
            more = stdout.read(count - len(buffer))
            if not more:
                raise SpeechError("espeak-ng wrote no WAV (it stopped before the audio)")
            buffer += more
        taken, buffer = buffer[:count], buffer[count:]
        return taken

    riff, _, form = take(4), take(4), take(4)  # the RIFF size between them is a placeholder
    if (riff, form) != (b"RIFF", b"WAVE"):
        raise SpeechError("espeak-ng wrote something that is not a WAV")
    rate = 0
    while True:
        name, size = take(4), int.from_bytes(take(4), "little")
        if name == b"data":
            break
        body = take(size + size % 2)  # chunks are padded to an even size
        if name == b"fmt ":
            channels, rate, bits = (int.from_bytes(body[2:4], "little"), int.from_bytes(body[4:8], "little"),
                                    int.from_bytes(body[14:16], "little"))
            if channels != 1 or bits != 16:
                raise SpeechError(f"espeak-ng wrote {channels}-channel {bits}-bit audio, expected 16-bit mono")
    if not rate:
        raise SpeechError("espeak-ng's WAV has no fmt chunk")
    return rate, buffer

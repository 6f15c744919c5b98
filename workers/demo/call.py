"""The demo's phone call: dial the gateway like a PBX, ask one question, record both sides to a WAV.

Runs the real voice-gateway protocol over a real WebSocket with local speech (espeak-ng for the
caller's voice; Kefu answers with its own configured providers) and writes the conversation, as
it was heard on the line, to a WAV file a person can play.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from channels.speech.audio import write_wav
from channels.speech.espeak import EspeakSynthesizer
from workers.phone_line import FRAME_S, PhoneLine

RATE = 8000
QUESTION = "hello, where is my order?"


def place_call(ws_base: str, secret: str, wav_path: Path, timeout_s: float = 60.0) -> float:
    """Seconds of Kefu's voice heard after the question (0.0 if it never answered)."""
    question = EspeakSynthesizer().synthesize(QUESTION, RATE)
    started = time.monotonic()
    deadline = started + timeout_s
    line = PhoneLine.dial(ws_base, secret, call_id="demo-call", sample_rate=RATE)
    line.open_line()

    def quiet_for(seconds: float) -> bool:
        return time.monotonic() - line.last_audio_at() >= seconds

    try:
        while (not line.heard or not quiet_for(0.6)) and time.monotonic() < deadline:
            time.sleep(FRAME_S)  # silence on the line while the greeting plays
        line.say(question)
        if not line.speech_ended.wait(max(0.0, deadline - time.monotonic())):
            return 0.0  # the question was never asked: nothing heard after it counts
        asked_at = line.ended_at
        while time.monotonic() < deadline and not (line.first_audio_after(asked_at) and quiet_for(1.0)):
            time.sleep(FRAME_S)
    finally:
        line.hang_up()
    heard = [(h.at, h.audio) for h in list(line.heard) if h.audio]
    _write([(at - started, pcm) for at, pcm in heard + list(line.sent)], wav_path)
    return line.audio_ms(since=asked_at) / 1000


def _write(timeline: list[tuple[float, bytes]], path: Path) -> None:
    end = max((at for at, _ in timeline), default=0.0) + 1.0
    mix = np.zeros(int(end * RATE) + RATE, dtype=np.int32)
    for at, pcm in timeline:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
        start = int(at * RATE)
        mix[start : start + len(samples)] += samples
    path.write_bytes(write_wav(np.clip(mix, -32768, 32767).astype("<i2").tobytes(), RATE))

"""The demo's phone call: dial the gateway like a PBX, ask one question, record both sides to a WAV.

Runs the real voice-gateway protocol over a real WebSocket through the PBX fake
(``channels/telephony/fake_pbx.py``) with local speech (espeak-ng for the caller's voice; Kefu
answers with its own configured providers) and writes the conversation, as it was heard on the
line, to a WAV file a person can play.
"""

from __future__ import annotations

import time
from pathlib import Path

from channels.speech.espeak import EspeakSynthesizer
from channels.telephony.fake_pbx import PhoneLine

RATE = 8000
QUESTION = "hello, where is my order?"


def place_call(ws_base: str, secret: str, wav_path: Path, timeout_s: float = 60.0) -> float:
    """Seconds of Kefu's voice heard after the question (0.0 if it never answered)."""
    question = EspeakSynthesizer().synthesize(QUESTION, RATE)
    deadline = time.monotonic() + timeout_s
    line = PhoneLine.dial(ws_base, secret, call_id="demo-call", sample_rate=RATE)
    line.open_line()
    try:
        asked_at = line.ask(question, deadline)
    finally:
        line.hang_up()
    wav_path.write_bytes(line.recording())
    return 0.0 if asked_at is None else line.audio_ms(since=asked_at) / 1000

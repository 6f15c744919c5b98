"""The demo's phone call: dial the gateway like a PBX, ask one question, record both sides to a WAV.

Runs the real voice-gateway protocol over a real WebSocket with local speech (espeak-ng for the
caller's voice; Kefu answers with its own configured providers) and writes the conversation, as
it was heard on the line, to a WAV file a person can play.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from channels.speech.audio import write_wav
from channels.speech.espeak import EspeakSynthesizer
from channels.telephony.events import frame_bytes

RATE = 8000
QUESTION = "hello, where is my order?"


def place_call(ws_base: str, secret: str, wav_path: Path, timeout_s: float = 60.0) -> float:
    """Seconds of Kefu's voice heard after the question (0.0 if it never answered)."""
    voice = EspeakSynthesizer()
    frame = frame_bytes(RATE)
    started = time.monotonic()
    timeline: list[tuple[float, bytes]] = []  # (seconds since start, audio) for both sides
    heard: list[float] = []
    with connect(f"{ws_base}/v1/voice/ws", additional_headers={"Authorization": f"Bearer {secret}"},
                 open_timeout=10, max_size=None) as ws:
        ws.send(json.dumps({"type": "start", "call_id": "demo-call", "caller": "+8613800138000",
                            "callee": "4008001234", "sample_rate": RATE, "encoding": "pcm_s16le"}))

        def listen() -> None:
            try:
                for message in ws:
                    if isinstance(message, bytes):
                        at = time.monotonic() - started
                        timeline.append((at, message))
                        heard.append(at)
            except ConnectionClosed:  # the call is over
                return

        threading.Thread(target=listen, daemon=True).start()

        def line(pcm: bytes) -> None:  # the caller's side, in real time
            for i in range(0, len(pcm), frame):
                timeline.append((time.monotonic() - started, pcm[i : i + frame]))
                ws.send(pcm[i : i + frame])
                time.sleep(0.02)

        def quiet_for(seconds: float) -> bool:
            return not heard or time.monotonic() - started - heard[-1] >= seconds

        deadline = time.monotonic() + timeout_s
        while (not heard or not quiet_for(0.6)) and time.monotonic() < deadline:
            line(bytes(frame))  # silence on the line while the greeting plays
        asked_at = time.monotonic() - started
        line(voice.synthesize(QUESTION, RATE))
        while time.monotonic() < deadline:
            line(bytes(frame))
            answered = [t for t in heard if t > asked_at]
            if answered and quiet_for(1.0):
                break
        ws.send(json.dumps({"type": "hangup"}))
    _write(timeline, wav_path)
    answer = [t for t in heard if t > asked_at]
    return len(answer) * 0.02


def _write(timeline: list[tuple[float, bytes]], path: Path) -> None:
    end = max((at for at, _ in timeline), default=0.0) + 1.0
    mix = np.zeros(int(end * RATE) + RATE, dtype=np.int32)
    for at, pcm in timeline:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
        start = int(at * RATE)
        mix[start : start + len(samples)] += samples
    path.write_bytes(write_wav(np.clip(mix, -32768, 32767).astype("<i2").tobytes(), RATE))

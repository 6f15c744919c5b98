"""A fake PBX voice gateway for tests: dials Kefu over the real WebSocket protocol with real audio.

It sends the ``start`` frame, then 20 ms PCM frames of whatever it is told to say (espeak-ng audio
in the tests) followed by silence, as a gateway streams a live line; a reader thread records every
frame Kefu sends back (audio and JSON actions) with the time it arrived.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.sync.client import ClientConnection, connect

from channels.telephony.events import frame_bytes


@dataclass
class Heard:
    at: float
    audio: bytes | None = None
    action: dict[str, Any] | None = None


@dataclass
class FakeGateway:
    ws: ClientConnection
    sample_rate: int
    heard: list[Heard] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def dial(cls, ws_url: str, secret: str, *, caller: str = "+8613800138000", callee: str = "4008001234",
             sample_rate: int = 8000, call_id: str = "call-1") -> FakeGateway:
        ws = connect(f"{ws_url}/v1/voice/ws", additional_headers={"Authorization": f"Bearer {secret}"},
                     open_timeout=10, max_size=None).__enter__()  # entered: closed by hang_up() or the server
        gateway = cls(ws, sample_rate)
        ws.send(json.dumps({"type": "start", "call_id": call_id, "caller": caller, "callee": callee,
                            "sample_rate": sample_rate, "encoding": "pcm_s16le"}))
        threading.Thread(target=gateway._read, daemon=True).start()
        return gateway

    def _read(self) -> None:
        try:
            for message in self.ws:
                if isinstance(message, bytes):
                    self.heard.append(Heard(time.monotonic(), audio=message))
                else:
                    self.heard.append(Heard(time.monotonic(), action=json.loads(message)))
        except Exception:
            pass
        finally:
            self.closed.set()

    def send_audio(self, pcm: bytes, realtime: bool = False) -> None:
        size = frame_bytes(self.sample_rate)
        for i in range(0, len(pcm), size):
            self.ws.send(pcm[i : i + size])
            if realtime:
                time.sleep(0.02)

    def silence(self, ms: int, realtime: bool = False) -> None:
        self.send_audio(bytes(self.sample_rate * ms // 1000 * 2), realtime)

    def press(self, digit: str) -> None:
        self.ws.send(json.dumps({"type": "dtmf", "digit": digit}))

    def hang_up(self) -> None:
        self.ws.send(json.dumps({"type": "hangup"}))
        self.ws.close()

    def audio_ms(self, since: float = 0.0) -> int:
        return sum(len(h.audio) for h in list(self.heard) if h.audio and h.at >= since) * 1000 // (2 * self.sample_rate)

    def wait_quiet(self, ms: int, timeout: float = 60) -> None:
        """Until Kefu has sent no audio for ``ms`` (it finished talking)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = max((h.at for h in list(self.heard) if h.audio), default=0.0)
            if time.monotonic() - last >= ms / 1000:
                return
            time.sleep(0.05)
        raise TimeoutError("Kefu kept talking")

    def actions(self) -> list[dict[str, Any]]:
        return [h.action for h in list(self.heard) if h.action is not None]

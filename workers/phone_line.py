"""The caller's end of a phone call, as a PBX's voice gateway would carry it: for the demo, the tests and
the latency benchmark.

:meth:`PhoneLine.dial` opens Kefu's voice-gateway WebSocket (``/v1/voice/ws``) with the gateway's
secret and sends the ``start`` frame; a reader thread records every frame Kefu sends back (audio and
JSON actions) with the time it arrived. The caller then either pushes audio as fast as the socket
takes it (:meth:`send_audio`, :meth:`silence`: tests that do not need real time) or opens a live
line (:meth:`open_line`): 20 ms frames paced in real time, silence unless :meth:`say` queued
speech, like a real call. Everything the caller sent on a live line is kept with its time
(:attr:`sent`), so both sides can be mixed into one recording.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from channels.telephony.events import frame_bytes

FRAME_S = 0.02


@dataclass
class Heard:
    at: float  # time.monotonic() when it arrived
    audio: bytes | None = None
    action: dict[str, Any] | None = None


@dataclass
class PhoneLine:
    ws: ClientConnection
    sample_rate: int
    heard: list[Heard] = field(default_factory=list)
    sent: list[tuple[float, bytes]] = field(default_factory=list)  # (time.monotonic(), frame) on a live line
    closed: threading.Event = field(default_factory=threading.Event)
    speech_ended: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0  # when the last frame of the latest say() went out
    _speech: queue.SimpleQueue[bytes] = field(default_factory=queue.SimpleQueue)
    _hung_up: threading.Event = field(default_factory=threading.Event)
    _send_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def dial(cls, ws_url: str, secret: str, *, caller: str = "+8613800138000", callee: str = "4008001234",
             sample_rate: int = 8000, call_id: str = "call-1") -> PhoneLine:
        ws = connect(f"{ws_url}/v1/voice/ws", additional_headers={"Authorization": f"Bearer {secret}"},
                     open_timeout=10, max_size=None).__enter__()  # entered: closed by hang_up() or the server
        line = cls(ws, sample_rate)
        ws.send(json.dumps({"type": "start", "call_id": call_id, "caller": caller, "callee": callee,
                            "sample_rate": sample_rate, "encoding": "pcm_s16le"}))
        threading.Thread(target=line._read, name="phone-line-read", daemon=True).start()
        return line

    # ---- what Kefu sends --------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            for message in self.ws:
                if isinstance(message, bytes):
                    self.heard.append(Heard(time.monotonic(), audio=message))
                else:
                    self.heard.append(Heard(time.monotonic(), action=json.loads(message)))
        except (ConnectionClosed, OSError):  # the call is over, however it ended
            pass
        finally:
            self.closed.set()

    def audio_ms(self, since: float = 0.0) -> int:
        return sum(len(h.audio) for h in list(self.heard) if h.audio and h.at >= since) * 1000 // (2 * self.sample_rate)

    def first_audio_after(self, moment: float) -> float | None:
        return next((h.at for h in list(self.heard) if h.audio and h.at > moment), None)

    def last_audio_at(self) -> float:
        return max((h.at for h in list(self.heard) if h.audio), default=0.0)

    def wait_quiet(self, ms: int, timeout: float = 60) -> None:
        """Until Kefu has sent no audio for ``ms`` (it finished talking)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if time.monotonic() - self.last_audio_at() >= ms / 1000:
                return
            time.sleep(0.05)
        raise TimeoutError("Kefu kept talking")

    def actions(self) -> list[dict[str, Any]]:
        return [h.action for h in list(self.heard) if h.action is not None]

    # ---- what the caller sends --------------------------------------------------------------------

    def _send(self, frame: bytes | str) -> None:
        with self._send_lock:
            self.ws.send(frame)

    def send_audio(self, pcm: bytes, realtime: bool = False) -> None:
        size = frame_bytes(self.sample_rate)
        for i in range(0, len(pcm), size):
            self._send(pcm[i : i + size])
            if realtime:
                time.sleep(FRAME_S)

    def silence(self, ms: int, realtime: bool = False) -> None:
        self.send_audio(bytes(self.sample_rate * ms // 1000 * 2), realtime)

    def open_line(self) -> None:
        """From now on a frame goes out every 20 ms: queued speech, else silence."""
        threading.Thread(target=self._live, name="phone-line-live", daemon=True).start()

    def say(self, pcm: bytes) -> None:
        """Speak on the live line; :attr:`speech_ended` is set when the last frame went out."""
        self.speech_ended.clear()
        size = frame_bytes(self.sample_rate)
        for i in range(0, len(pcm), size):
            self._speech.put(pcm[i : i + size])
        self._speech.put(b"")  # marker: the speech ends here

    def _live(self) -> None:
        silence = bytes(frame_bytes(self.sample_rate))
        next_at = time.monotonic()
        while not self._hung_up.is_set() and not self.closed.is_set():
            try:
                frame = self._speech.get_nowait()
            except queue.Empty:
                frame = silence
            if frame == b"":
                self.ended_at = time.monotonic()
                self.speech_ended.set()
                continue
            try:
                self._send(frame)
            except (ConnectionClosed, OSError):  # Kefu hung up
                return
            self.sent.append((time.monotonic(), frame))
            next_at += FRAME_S
            time.sleep(max(0.0, next_at - time.monotonic()))

    def press(self, digit: str) -> None:
        self._send(json.dumps({"type": "dtmf", "digit": digit}))

    def hang_up(self) -> None:
        self._hung_up.set()
        try:
            self._send(json.dumps({"type": "hangup"}))
        finally:
            self.ws.close()

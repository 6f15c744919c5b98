"""A fake PBX: the caller's end of a phone call, as a voice gateway carries it to Kefu.

For the demo (``kefu demo``), the tests, the latency benchmark and an operator (``kefu fake pbx``).
It speaks Kefu's voice-gateway WebSocket protocol (``/v1/voice/ws``) through the real codec
(:func:`~channels.telephony.gateway_ws.encode_event` out, :func:`~channels.telephony.gateway_ws.decode_action`
in), so it can only send what a conforming gateway sends.

:meth:`PhoneLine.dial` connects with the gateway's secret and sends :class:`CallStarted`; a reader
thread records every action Kefu sends back (audio included) with the time it arrived
(:attr:`PhoneLine.heard`). The caller then either pushes audio as fast as the socket takes it
(:meth:`~PhoneLine.send_audio`, :meth:`~PhoneLine.silence`: tests that do not need real time) or
opens a live line (:meth:`~PhoneLine.open_line`): 20 ms frames paced in real time, silence unless
:meth:`~PhoneLine.say` queued speech, like a real call. Everything sent on a live line is kept with
its time (:attr:`PhoneLine.sent`), so :meth:`~PhoneLine.recording` can mix both sides into one WAV.
When the line closes, :attr:`~PhoneLine.close_code` and :attr:`~PhoneLine.close_reason` keep Kefu's close
frame (1006: none came) and :attr:`~PhoneLine.sent_close` ours (e.g. websockets' 1011 "keepalive ping
timeout" when Kefu stopped answering pings).

Raises: ``websockets``' ``InvalidStatus`` from :meth:`~PhoneLine.dial` when Kefu refuses the call (a
wrong secret: 403), ``TimeoutError`` from the waits. A frame from Kefu that breaks the protocol ends
the line; :attr:`PhoneLine.error` then says why.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from channels.speech.audio import write_wav
from channels.telephony.events import (
    FRAME_MS,
    AudioIn,
    AudioOut,
    CallAction,
    CallStarted,
    DtmfIn,
    HangupIn,
    frame_bytes,
)
from channels.telephony.gateway_ws import ProtocolError, decode_action, encode_event

FRAME_S = FRAME_MS / 1000


@dataclass(frozen=True)
class Heard:
    at: float  # time.monotonic() when it arrived
    action: CallAction

    @property
    def audio(self) -> bytes | None:
        return self.action.pcm if isinstance(self.action, AudioOut) else None


@dataclass
class PhoneLine:
    ws: ClientConnection
    sample_rate: int
    on_heard: Callable[[Heard], None] | None = None  # called on the reader thread, for each action
    dialed_at: float = field(default_factory=time.monotonic)
    heard: list[Heard] = field(default_factory=list)
    sent: list[tuple[float, bytes]] = field(default_factory=list)  # (time.monotonic(), frame) on a live line
    closed: threading.Event = field(default_factory=threading.Event)
    speech_ended: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0  # when the last frame of the latest say() went out
    error: ProtocolError | None = None  # a frame from Kefu that broke the protocol (the line was closed)
    # once :attr:`closed` is set: Kefu's close frame (code 1006 when none came: the socket just dropped) and ours,
    # if we sent one (1000 from hang_up(); 1011 "keepalive ping timeout" when Kefu stopped answering pings)
    close_code: int | None = None
    close_reason: str = ""
    sent_close: tuple[int, str] | None = None
    _speech: queue.SimpleQueue[bytes] = field(default_factory=queue.SimpleQueue)
    _hung_up: threading.Event = field(default_factory=threading.Event)
    _send_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def dial(cls, ws_url: str, secret: str, *, caller: str = "+8613800138000", callee: str = "4008001234",
             sample_rate: int = 8000, call_id: str = "call-1", on_heard: Callable[[Heard], None] | None = None,
             ) -> PhoneLine:
        """Call Kefu's gateway at ``ws_url`` (``ws://host:port``, without the path)."""
        dialed_at = time.monotonic()
        ws = connect(f"{ws_url}/v1/voice/ws", additional_headers={"Authorization": f"Bearer {secret}"},
                     open_timeout=10, max_size=None).__enter__()  # entered: closed by hang_up() or the server
        line = cls(ws, sample_rate, on_heard, dialed_at)
        line._send(encode_event(CallStarted(call_id, caller, callee, sample_rate)))
        threading.Thread(target=line._read, name="phone-line-read", daemon=True).start()
        return line

    # ---- what Kefu sends --------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            for message in self.ws:
                heard = Heard(time.monotonic(), decode_action(message))
                self.heard.append(heard)
                if self.on_heard is not None:
                    self.on_heard(heard)
        except ProtocolError as exc:
            self.error = exc
            self.ws.close()
        except (ConnectionClosed, OSError):  # the call is over, however it ended
            pass
        finally:
            self._record_close()
            self.closed.set()

    def _record_close(self) -> None:
        protocol = self.ws.protocol
        received, sent = protocol.close_rcvd, protocol.close_sent
        self.close_code, self.close_reason = (int(received.code), received.reason) if received else (1006, "")
        self.sent_close = (int(sent.code), sent.reason) if sent else None

    def audio_ms(self, since: float = 0.0) -> int:
        return sum(len(h.audio) for h in list(self.heard) if h.audio and h.at >= since) * 1000 // (2 * self.sample_rate)

    def first_audio_after(self, moment: float) -> float | None:
        return next((h.at for h in list(self.heard) if h.audio and h.at > moment), None)

    def last_audio_at(self) -> float:
        return max((h.at for h in list(self.heard) if h.audio), default=0.0)

    def quiet_for(self, seconds: float) -> bool:
        """Kefu has sent no audio for ``seconds``."""
        return time.monotonic() - self.last_audio_at() >= seconds

    def wait_quiet(self, ms: int, timeout: float = 60) -> None:
        """Until Kefu has sent no audio for ``ms`` (it finished talking)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.quiet_for(ms / 1000):
                return
            time.sleep(0.05)
        raise TimeoutError("Kefu kept talking")

    def actions(self) -> list[CallAction]:
        """What Kefu asked for besides audio (clear, transfer, hangup), in order."""
        return [h.action for h in list(self.heard) if not isinstance(h.action, AudioOut)]

    # ---- what the caller sends --------------------------------------------------------------------

    def _send(self, frame: bytes | str) -> None:
        with self._send_lock:
            self.ws.send(frame)

    def _frames(self, pcm: bytes) -> list[bytes]:
        size = frame_bytes(self.sample_rate)
        return [pcm[i : i + size] for i in range(0, len(pcm), size)]

    def send_audio(self, pcm: bytes, realtime: bool = False) -> None:
        for frame in self._frames(pcm):
            self._send(encode_event(AudioIn(frame)))
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
        for frame in self._frames(pcm):
            self._speech.put(frame)
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
                self._send(encode_event(AudioIn(frame)))
            except (ConnectionClosed, OSError):  # Kefu hung up
                return
            self.sent.append((time.monotonic(), frame))
            next_at += FRAME_S
            time.sleep(max(0.0, next_at - time.monotonic()))

    def ask(self, pcm: bytes, deadline: float, *, greeting_quiet_s: float = 0.6, answer_quiet_s: float = 1.0
            ) -> float | None:
        """On a live line: wait out the greeting, say ``pcm``, then wait until the answer is over.

        Returns when the question ended (``time.monotonic()``), or None if it was never fully asked
        before ``deadline`` (a ``time.monotonic()`` value) or the line closed; the answer is then
        :meth:`audio_ms` ``(since=…)``.
        """
        while (not self.heard or not self.quiet_for(greeting_quiet_s)) and time.monotonic() < deadline:
            if self.closed.is_set():
                return None
            time.sleep(FRAME_S)  # silence on the line while the greeting plays
        self.say(pcm)
        if not self.speech_ended.wait(max(0.0, deadline - time.monotonic())):
            return None  # the question was never asked: nothing heard after it counts
        asked_at = self.ended_at
        while time.monotonic() < deadline and not self.closed.is_set() and not (
                self.first_audio_after(asked_at) and self.quiet_for(answer_quiet_s)):
            time.sleep(FRAME_S)
        return asked_at

    def press(self, digit: str) -> None:
        self._send(encode_event(DtmfIn(digit)))

    def send_frame(self, frame: bytes | str) -> None:
        """One frame exactly as given: a gateway's ``{"type": "hangup"}`` that waits for Kefu to close the socket
        (``encode_event(HangupIn())``), or a malformed frame (how Kefu refuses it)."""
        self._send(frame)

    def hang_up(self) -> None:
        self._hung_up.set()
        try:
            self._send(encode_event(HangupIn("caller")))
        except (ConnectionClosed, OSError):  # Kefu hung up first
            pass
        finally:
            self.ws.close()

    def recording(self) -> bytes:
        """Both sides of the call as heard on the line, mixed into one WAV (times from :attr:`dialed_at`)."""
        timeline = [(h.at, h.audio) for h in list(self.heard) if h.audio] + list(self.sent)
        end = max((at - self.dialed_at for at, _ in timeline), default=0.0) + 1.0
        rate = self.sample_rate
        mix = np.zeros(int(end * rate) + rate, dtype=np.int32)
        for at, pcm in timeline:
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
            start = int((at - self.dialed_at) * rate)
            mix[start : start + len(samples)] += samples
        return write_wav(np.clip(mix, -32768, 32767).astype("<i2").tobytes(), rate)

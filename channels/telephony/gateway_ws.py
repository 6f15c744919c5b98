"""Kefu's voice-gateway WebSocket protocol, as events. Pure; the endpoint feeds it frames.

From the gateway:

- first, a text frame ``{"type": "start", "call_id": "...", "caller": "+86138…", "callee": "400…",
  "sample_rate": 8000 | 16000, "encoding": "pcm_s16le"}``;
- then binary frames of 16-bit little-endian mono PCM, 20 ms each (320 bytes at 8 kHz, 640 at 16 kHz;
  any whole number of samples up to one second is accepted);
- text frames ``{"type": "dtmf", "digit": "0"}`` and ``{"type": "hangup"}``.

From Kefu: binary PCM frames in the same format, paced in real time, and text frames
``{"type": "clear"}`` (stop playback now), ``{"type": "transfer", "to": "<number>"}`` and
``{"type": "hangup", "reason": "..."}``.

Every malformed frame raises :class:`ProtocolError` with a message the gateway's operator can act on.

Kefu's side is :class:`GatewayDecoder` and :func:`encode`; the gateway's side, the exact inverse, is
:func:`encode_event` and :func:`decode_action` (used by the PBX fake, ``channels/telephony/fake_pbx.py``).
"""

from __future__ import annotations

import json
from typing import Any

from channels.telephony.events import (
    DTMF_DIGITS,
    SAMPLE_RATES,
    AudioIn,
    AudioOut,
    CallAction,
    CallEvent,
    CallStarted,
    ClearAudio,
    DtmfIn,
    HangupIn,
    HangupOut,
    Transfer,
)

ENCODING = "pcm_s16le"
MAX_TEXT_FRAME = 4096


class ProtocolError(ValueError):
    """A frame that breaks the protocol; the connection is closed with this message."""


class GatewayDecoder:
    def __init__(self) -> None:
        self.started: CallStarted | None = None

    def text(self, frame: str) -> CallEvent:
        if len(frame) > MAX_TEXT_FRAME:
            raise ProtocolError(f"text frames are limited to {MAX_TEXT_FRAME} characters")
        try:
            message: Any = json.loads(frame)
        except ValueError:
            raise ProtocolError("text frames must be JSON objects") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError('text frames must be JSON objects with a "type"')
        kind = message["type"]
        if self.started is None:
            if kind != "start":
                raise ProtocolError('the first frame must be {"type": "start", ...}')
            self.started = _start(message)
            return self.started
        if kind == "dtmf":
            digit = message.get("digit")
            if not isinstance(digit, str) or digit not in DTMF_DIGITS:
                raise ProtocolError('"digit" must be one of 0-9, *, #, A-D')
            return DtmfIn(digit)
        if kind == "hangup":
            return HangupIn(str(message.get("reason") or "caller")[:64])
        if kind == "start":
            raise ProtocolError("the call has already started")
        raise ProtocolError(f"unknown frame type {kind!r}; expected dtmf or hangup")

    def binary(self, frame: bytes) -> AudioIn:
        if self.started is None:
            raise ProtocolError('audio before the {"type": "start"} frame')
        if len(frame) % 2:
            raise ProtocolError("audio frames must hold whole 16-bit samples")
        if len(frame) > self.started.sample_rate * 2:
            raise ProtocolError("audio frames are limited to one second")
        return AudioIn(frame)


def _start(message: dict[str, Any]) -> CallStarted:
    call_id = message.get("call_id")
    if not isinstance(call_id, str) or not 0 < len(call_id) <= 128:
        raise ProtocolError('"call_id" must be a string of 1-128 characters')
    rate = message.get("sample_rate")
    if rate not in SAMPLE_RATES:
        raise ProtocolError(f'"sample_rate" must be one of {list(SAMPLE_RATES)}')
    encoding = message.get("encoding", ENCODING)
    if encoding != ENCODING:
        raise ProtocolError(f'"encoding" must be "{ENCODING}" (16-bit little-endian mono PCM)')
    caller, callee = message.get("caller", ""), message.get("callee", "")
    if not isinstance(caller, str) or not isinstance(callee, str) or len(caller) > 64 or len(callee) > 64:
        raise ProtocolError('"caller" and "callee" must be strings of at most 64 characters')
    return CallStarted(call_id, caller, callee, int(rate))


def encode(action: CallAction) -> str | bytes:
    """A text (JSON) or binary frame for the gateway."""
    if isinstance(action, AudioOut):
        return action.pcm
    if isinstance(action, ClearAudio):
        return json.dumps({"type": "clear"})
    if isinstance(action, Transfer):
        return json.dumps({"type": "transfer", "to": action.to})
    if isinstance(action, HangupOut):
        return json.dumps({"type": "hangup", "reason": action.reason})
    raise TypeError(f"not a call action: {action!r}")


# ---- the gateway's side: the inverse of the two above ----------------------------------------------

def encode_event(event: CallEvent) -> str | bytes:
    """The frame a voice gateway sends for ``event``; :class:`GatewayDecoder` reads it back unchanged."""
    if isinstance(event, AudioIn):
        return event.pcm
    if isinstance(event, CallStarted):
        return json.dumps({"type": "start", "call_id": event.call_id, "caller": event.caller, "callee": event.callee,
                           "sample_rate": event.sample_rate, "encoding": ENCODING})
    if isinstance(event, DtmfIn):
        return json.dumps({"type": "dtmf", "digit": event.digit})
    if isinstance(event, HangupIn):
        return json.dumps({"type": "hangup", "reason": event.reason})
    raise TypeError(f"not an event of this wire: {event!r}")


def decode_action(frame: str | bytes) -> CallAction:
    """What Kefu asked for in ``frame`` (the inverse of :func:`encode`); :class:`ProtocolError` if malformed."""
    if isinstance(frame, bytes):
        if len(frame) % 2:
            raise ProtocolError("audio frames must hold whole 16-bit samples")
        return AudioOut(frame)
    try:
        message: Any = json.loads(frame)
    except ValueError:
        raise ProtocolError("text frames must be JSON objects") from None
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "clear":
        return ClearAudio()
    if kind == "transfer" and isinstance(message.get("to"), str):
        return Transfer(message["to"])
    if kind == "hangup":
        return HangupOut(str(message.get("reason") or "completed"))
    raise ProtocolError(f"not an action: {frame[:80]!r}; expected clear, transfer (with \"to\") or hangup")

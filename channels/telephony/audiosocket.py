"""Asterisk AudioSocket: the TCP wire format, as events. Pure; no sockets here.

Every message is ``type`` (1 byte) + ``length`` (2 bytes, big-endian) + ``payload``:

====  =========================================================================
0x00  hangup (no payload)
0x01  the call's UUID (16 bytes), always the first message from Asterisk
0x03  DTMF digit (1 ASCII byte)
0x10  audio: signed linear 16-bit little-endian, 8 kHz mono (Asterisk ``slin``)
0xff  error (optional payload: an application-specific code)
====  =========================================================================

AudioSocket carries no caller number, callee or sample rate: the call starts at 8 kHz with the
UUID as its id (the dialplan can put the caller number into the UUID mapping; see
docs/telephony.md). Kefu answers with 0x10 audio messages of 20 ms each (320 bytes, what Asterisk
itself sends; it forwards whatever size it gets as one frame, without pacing) and a 0x00 hangup;
AudioSocket has no "clear" or "transfer", so those are not encodable (the dialplan transfers after
``AudioSocket()`` returns).

Raises :class:`AudioSocketError` for bytes that are not AudioSocket; its :attr:`~AudioSocketError.short`
is the few words the server records as the call's outcome (``error:<short>``).
"""

from __future__ import annotations

import struct
import uuid

from channels.telephony.events import (
    AudioIn,
    AudioOut,
    CallAction,
    CallEvent,
    CallStarted,
    DtmfIn,
    GatewayError,
    HangupIn,
    HangupOut,
    frame_bytes,
)

KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_AUDIO, KIND_ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
SAMPLE_RATE = 8000
AUDIO_PAYLOAD = frame_bytes(SAMPLE_RATE)  # 20 ms of slin: 320 bytes
MAX_PAYLOAD = 0xFFFF
_HEADER = struct.Struct(">BH")


class AudioSocketError(ValueError):
    """The peer sent bytes that are not AudioSocket: the message for the log, and :attr:`short` for the outcome."""

    def __init__(self, message: str, short: str) -> None:
        super().__init__(message)
        self.short = short


def encode_message(kind: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise AudioSocketError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}", "payload too long")
    return _HEADER.pack(kind, len(payload)) + payload


def encode_action(action: CallAction) -> bytes | None:
    """The bytes for an action, or None when AudioSocket cannot express it (clear, transfer). Audio goes in
    messages of 20 ms (the last one may be shorter)."""
    if isinstance(action, AudioOut):
        pcm, size = action.pcm, AUDIO_PAYLOAD
        return b"".join(encode_message(KIND_AUDIO, pcm[i : i + size]) for i in range(0, len(pcm), size))
    if isinstance(action, HangupOut):
        return encode_message(KIND_HANGUP)
    return None


class AudioSocketDecoder:
    """Feed bytes as they arrive from TCP; get events. The first message must be the UUID."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.call_id = ""  # the UUID, once read: known even when the same chunk then breaks the protocol

    def feed(self, data: bytes) -> list[CallEvent]:
        self._buffer += data
        events: list[CallEvent] = []
        while len(self._buffer) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buffer)
            if len(self._buffer) < _HEADER.size + length:
                break
            payload = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
            del self._buffer[: _HEADER.size + length]
            events.append(self._event(kind, payload))
        return events

    def _event(self, kind: int, payload: bytes) -> CallEvent:
        if not self.call_id:
            if kind != KIND_UUID or len(payload) != 16:
                raise AudioSocketError("the first AudioSocket message must be the 16-byte call UUID", "no uuid")
            self.call_id = str(uuid.UUID(bytes=payload))
            return CallStarted(self.call_id, caller="", callee="", sample_rate=SAMPLE_RATE)
        if kind == KIND_AUDIO:
            if len(payload) % 2:
                raise AudioSocketError("audio payload is not whole 16-bit samples", "odd audio length")
            return AudioIn(payload)
        if kind == KIND_DTMF:
            digit = payload.decode("ascii", "replace")
            if len(digit) != 1:
                raise AudioSocketError("a DTMF message carries exactly one digit", "bad dtmf")
            return DtmfIn(digit)
        if kind == KIND_HANGUP:
            return HangupIn("caller")
        if kind == KIND_ERROR:
            code = payload[0] if payload else 0
            return GatewayError(code, "error reported by Asterisk")
        if kind == KIND_UUID:
            raise AudioSocketError("a second UUID message on one connection", "second uuid")
        raise AudioSocketError(f"unknown AudioSocket message type 0x{kind:02x}", f"unknown type 0x{kind:02x}")

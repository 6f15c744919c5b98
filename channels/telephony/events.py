"""What a voice gateway tells Kefu about a call, and what Kefu tells it back. Wire-independent.

Audio is always 16-bit little-endian signed mono PCM at the call's sample rate (8 or 16 kHz),
in frames of 20 ms (320 or 640 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATES = (8000, 16000)
FRAME_MS = 20


def frame_bytes(sample_rate: int) -> int:
    """Bytes in one 20 ms frame of 16-bit mono PCM."""
    return sample_rate * FRAME_MS // 1000 * 2


# ---- from the gateway --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CallStarted:
    call_id: str
    caller: str
    callee: str
    sample_rate: int


@dataclass(frozen=True, slots=True)
class AudioIn:
    pcm: bytes


@dataclass(frozen=True, slots=True)
class DtmfIn:
    digit: str  # one of 0-9 * # A-D


@dataclass(frozen=True, slots=True)
class HangupIn:
    reason: str = "caller"


@dataclass(frozen=True, slots=True)
class GatewayError:
    code: int
    message: str = ""


CallEvent = CallStarted | AudioIn | DtmfIn | HangupIn | GatewayError


# ---- to the gateway ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AudioOut:
    pcm: bytes


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Stop playing whatever audio was sent and not yet played (barge-in)."""


@dataclass(frozen=True, slots=True)
class Transfer:
    to: str  # the human agent's number or extension


@dataclass(frozen=True, slots=True)
class HangupOut:
    reason: str = "completed"


CallAction = AudioOut | ClearAudio | Transfer | HangupOut

DTMF_DIGITS = frozenset("0123456789*#ABCD")


def mask_number(number: str) -> str:
    """A caller number for logs: the last four digits only (``****5678``)."""
    digits = "".join(ch for ch in number if ch.isalnum())
    return "****" + digits[-4:] if len(digits) > 4 else "****"

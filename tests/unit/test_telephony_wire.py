"""The phone channel's wire codecs (Kefu's gateway WebSocket protocol, Asterisk AudioSocket) and VAD."""

from __future__ import annotations

import json
import math
import struct
import uuid
from array import array

import pytest

from channels.telephony import audiosocket as asock
from channels.telephony.events import (
    AudioIn,
    AudioOut,
    CallStarted,
    ClearAudio,
    DtmfIn,
    GatewayError,
    HangupIn,
    HangupOut,
    Transfer,
    frame_bytes,
    mask_number,
)
from channels.telephony.gateway_ws import GatewayDecoder, ProtocolError, decode_action, encode, encode_event
from channels.telephony.vad import Endpointer, SpeechStarted, UtteranceEnded, level_dbfs

START = {"type": "start", "call_id": "c-1", "caller": "+8613800138000", "callee": "4008001234",
         "sample_rate": 8000, "encoding": "pcm_s16le"}


def tone(ms: int, rate: int = 8000, amplitude: float = 0.3, freq: float = 440.0) -> bytes:
    n = rate * ms // 1000
    return array("h", (int(amplitude * 32767 * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))).tobytes()


def silence(ms: int, rate: int = 8000) -> bytes:
    return bytes(rate * ms // 1000 * 2)


def frames(pcm: bytes, rate: int = 8000) -> list[bytes]:
    size = frame_bytes(rate)
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


# ---- gateway WebSocket protocol -------------------------------------------------------------------

def test_a_call_in_frames() -> None:
    decoder = GatewayDecoder()
    assert decoder.text(json.dumps(START)) == CallStarted("c-1", "+8613800138000", "4008001234", 8000)
    assert decoder.binary(silence(20)) == AudioIn(silence(20))
    assert decoder.text('{"type": "dtmf", "digit": "0"}') == DtmfIn("0")
    assert decoder.text('{"type": "hangup"}') == HangupIn("caller")


@pytest.mark.parametrize(("frames_in", "message"), [
    (['{"type": "dtmf", "digit": "1"}'], "first frame must be"),
    ([b"\x00\x00"], "audio before"),
    (["not json"], "JSON objects"),
    ([json.dumps(START | {"sample_rate": 44100})], "sample_rate"),
    ([json.dumps(START | {"encoding": "mulaw"})], "pcm_s16le"),
    ([json.dumps(START | {"call_id": ""})], "call_id"),
    ([json.dumps(START), b"\x00\x00\x00"], "whole 16-bit samples"),
    ([json.dumps(START), b"\x00" * 16002], "one second"),
    ([json.dumps(START), '{"type": "dtmf", "digit": "x"}'], "digit"),
    ([json.dumps(START), '{"type": "start"}'], "already started"),
    ([json.dumps(START), '{"type": "play"}'], "unknown frame type"),
])
def test_protocol_errors_say_what_is_wrong(frames_in: list[str | bytes], message: str) -> None:
    decoder = GatewayDecoder()
    with pytest.raises(ProtocolError, match=message):
        for frame in frames_in:
            decoder.binary(frame) if isinstance(frame, bytes) else decoder.text(frame)


def test_actions_encode_to_frames() -> None:
    assert encode(AudioOut(b"\x01\x00")) == b"\x01\x00"
    assert json.loads(str(encode(ClearAudio()))) == {"type": "clear"}
    assert json.loads(str(encode(Transfer("8001")))) == {"type": "transfer", "to": "8001"}
    assert json.loads(str(encode(HangupOut("silence")))) == {"type": "hangup", "reason": "silence"}


@pytest.mark.parametrize("rate", [8000, 16000])
def test_the_gateways_events_round_trip_through_kefus_decoder(rate: int) -> None:
    events = [CallStarted("c-9", "+8613800138000", "4008001234", rate), AudioIn(tone(20, rate)), DtmfIn("#"),
              AudioIn(silence(20, rate)), HangupIn("caller")]
    decoder = GatewayDecoder()
    decoded = []
    for event in events:
        frame = encode_event(event)
        decoded.append(decoder.binary(frame) if isinstance(frame, bytes) else decoder.text(frame))
    assert decoded == events
    assert GatewayDecoder().text(str(encode_event(events[0]))) == events[0]
    assert json.loads(str(encode_event(events[0]))) == START | {"call_id": "c-9", "sample_rate": rate}


def test_a_hangup_with_its_reason_round_trips() -> None:
    decoder = GatewayDecoder()
    decoder.text(str(encode_event(CallStarted("c-1", "", "", 8000))))
    assert decoder.text(str(encode_event(HangupIn("pbx-shutdown")))) == HangupIn("pbx-shutdown")


def test_gateway_errors_are_not_frames_of_this_wire() -> None:
    with pytest.raises(TypeError, match="not an event"):
        encode_event(GatewayError(2))


@pytest.mark.parametrize("action", [AudioOut(tone(20)), ClearAudio(), Transfer("8001"), HangupOut("silence"),
                                    HangupOut("completed")])
def test_kefus_actions_round_trip_through_the_gateways_decoder(action: AudioOut | ClearAudio | Transfer | HangupOut
                                                                ) -> None:
    assert decode_action(encode(action)) == action


@pytest.mark.parametrize(("frame", "message"), [
    ("not json", "JSON objects"),
    ('{"type": "play"}', "not an action"),
    ('{"type": "transfer"}', "not an action"),
    ("[1]", "not an action"),
    (b"\x00\x00\x00", "whole 16-bit samples"),
])
def test_malformed_actions_say_what_is_wrong(frame: str | bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_action(frame)


def test_caller_numbers_are_masked() -> None:
    assert mask_number("+86 138-0013-8000") == "****8000"
    assert mask_number("123") == "****"


# ---- AudioSocket ------------------------------------------------------------------------------------

def test_audiosocket_round_trip_in_arbitrary_tcp_chunks() -> None:
    call = uuid.uuid4()
    audio = tone(20)
    wire = (asock.encode_message(asock.KIND_UUID, call.bytes) + asock.encode_message(asock.KIND_AUDIO, audio)
            + asock.encode_message(asock.KIND_DTMF, b"0") + asock.encode_message(asock.KIND_ERROR, b"\x02")
            + asock.encode_message(asock.KIND_HANGUP))
    decoder = asock.AudioSocketDecoder()
    events = []
    for i in range(0, len(wire), 7):  # TCP may split anywhere
        events += decoder.feed(wire[i : i + 7])
    assert events == [CallStarted(str(call), "", "", 8000), AudioIn(audio), DtmfIn("0"),
                      GatewayError(2, "error reported by Asterisk"), HangupIn("caller")]


def test_audiosocket_encodes_audio_in_20_ms_messages_and_hangup() -> None:
    pcm = tone(50)  # 800 bytes at 8 kHz: two 20 ms messages of 320 bytes and one of 160
    wire = asock.encode_action(AudioOut(pcm))
    assert wire is not None
    headers = [struct.unpack_from(">BH", wire, at) for at in (0, 323, 646)]
    assert headers == [(asock.KIND_AUDIO, 320), (asock.KIND_AUDIO, 320), (asock.KIND_AUDIO, 160)]
    assert len(wire) == 3 * 3 + 800
    decoder = asock.AudioSocketDecoder()
    decoder.feed(asock.encode_message(asock.KIND_UUID, uuid.uuid4().bytes))
    assert [e.pcm for e in decoder.feed(wire) if isinstance(e, AudioIn)] == [pcm[:320], pcm[320:640], pcm[640:]]
    assert asock.encode_action(AudioOut(tone(20))) == asock.encode_message(asock.KIND_AUDIO, tone(20))  # one frame
    assert asock.encode_action(HangupOut()) == b"\x00\x00\x00"
    assert asock.encode_action(ClearAudio()) is None and asock.encode_action(Transfer("1")) is None


CALL_UUID = asock.encode_message(asock.KIND_UUID, bytes(16))


@pytest.mark.parametrize(("wire", "message", "short"), [
    (asock.encode_message(asock.KIND_AUDIO, b"\x00\x00"), "first AudioSocket message", "no uuid"),
    (asock.encode_message(asock.KIND_UUID, b"short"), "16-byte", "no uuid"),
    (CALL_UUID + struct.pack(">BH", 0x42, 0), "unknown AudioSocket message type 0x42", "unknown type 0x42"),
    (CALL_UUID + asock.encode_message(asock.KIND_AUDIO, b"\x00"), "whole", "odd audio length"),
    (CALL_UUID + asock.encode_message(asock.KIND_DTMF, b"12"), "one digit", "bad dtmf"),
    (CALL_UUID + CALL_UUID, "second UUID", "second uuid"),
])
def test_audiosocket_garbage_is_refused_with_a_short_reason_for_the_outcome(wire: bytes, message: str,
                                                                           short: str) -> None:
    with pytest.raises(asock.AudioSocketError, match=message) as refused:
        asock.AudioSocketDecoder().feed(wire)
    assert refused.value.short == short


def test_an_audiosocket_payload_over_64_kib_is_not_encodable() -> None:
    with pytest.raises(asock.AudioSocketError) as refused:
        asock.encode_message(asock.KIND_AUDIO, bytes(asock.MAX_PAYLOAD + 1))
    assert refused.value.short == "payload too long"
    assert len(asock.encode_message(asock.KIND_AUDIO, bytes(asock.MAX_PAYLOAD))) == 3 + asock.MAX_PAYLOAD


# ---- VAD and endpointing ------------------------------------------------------------------------------

def test_levels() -> None:
    assert level_dbfs(silence(20)) == -100.0
    assert -14 < level_dbfs(tone(20, amplitude=0.3)) < -12  # a sine's RMS is peak/sqrt(2)


def test_an_utterance_ends_after_the_configured_silence() -> None:
    ep = Endpointer(8000, silence_ms=600)
    events: list[object] = []
    for frame in frames(silence(400) + tone(800) + silence(1000)):
        events += ep.feed(frame)
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded]
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, UtteranceEnded)
    assert started.at_ms == 400 and ended.ended_ms == 1200
    assert len(ended.pcm) >= len(tone(800))  # the whole utterance, with pre-roll, reaches the recognizer


def test_a_click_is_not_speech_and_a_short_pause_does_not_end_the_utterance() -> None:
    ep = Endpointer(8000, silence_ms=600, start_ms=60)
    events: list[object] = []
    for frame in frames(silence(200) + tone(40) + silence(400)):  # 40 ms click
        events += ep.feed(frame)
    assert events == []
    for frame in frames(tone(500) + silence(300) + tone(500) + silence(700)):  # a 300 ms pause mid-sentence
        events += ep.feed(frame)
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded]


def test_speech_over_steady_noise_is_found() -> None:
    import random

    rng = random.Random(1)
    noise = array("h", (int(rng.gauss(0, 300)) for _ in range(8000 * 2))).tobytes()  # ~ -41 dBFS hiss
    ep = Endpointer(8000)
    events: list[object] = []
    for frame in frames(noise + tone(600, amplitude=0.2) + noise[: 8000 * 2]):
        events += ep.feed(frame)
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded]


def test_noise_rising_after_a_silent_start_is_learned_not_taken_for_endless_speech() -> None:
    import random

    rng = random.Random(2)
    hiss = array("h", (int(rng.gauss(0, 400)) for _ in range(8000 * 6))).tobytes()  # 6 s at ~ -38 dBFS
    ep = Endpointer(8000, max_ms=15_000)
    events: list[object] = []
    for frame in frames(silence(500) + hiss):  # digital silence first: the floor starts at the bottom
        events += ep.feed(frame)
    # the hiss looked like speech until a whole window passed without a dip; then it ended as one utterance
    assert [type(e) for e in events] == [SpeechStarted, UtteranceEnded] and not ep.in_speech
    ended = events[1]
    assert isinstance(ended, UtteranceEnded) and ended.ended_ms - ended.started_ms < 4000
    later: list[object] = []
    for frame in frames(hiss[:16000] + tone(600, amplitude=0.2) + hiss[:16000]):
        later += ep.feed(frame)
    assert [type(e) for e in later] == [SpeechStarted, UtteranceEnded]  # speech over the noise is still heard

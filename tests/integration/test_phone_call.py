"""Phone calls end to end: the PBX fake (channels/telephony/fake_pbx.py) dials the real gateway with
espeak-ng audio, a real worker answers with the random-weight Qwen3, and Kefu speaks the answer back."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from websockets.exceptions import ConnectionClosed, InvalidStatus

from channels.speech.espeak import EspeakSynthesizer
from channels.telephony import audiosocket as asock
from channels.telephony import takeover
from channels.telephony.events import AudioIn, ClearAudio, HangupIn, HangupOut, Transfer
from channels.telephony.fake_pbx import PhoneLine
from channels.telephony.gateway_ws import encode_event
from models import desk
from models.envelope import ConversationKey
from models.infra.bus import make_bus
from models.tables import AuditEvent, InboundRecord, ReplyRecord
from tests.conftest import as_env
from tests.integration.conftest import Stack, start_stack, wait_for
from workers import user_command
from workers.demo.processes import free_port

SECRET = "pbx-secret"


@pytest.fixture(scope="module")
def phone(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[Stack]:
    stack = start_stack("embedded", tmp_path_factory.mktemp("phone"), tiny_gguf, None, None,
                        voice_gateways=[{"name": "pbx", "secret": SECRET}],
                        # English, as the questions: pocketsphinx understands no Chinese (channels/telephony/asr_language.py)
                        hotlines=[{"number": "4008001234", "transfer_to": "8001",
                                   "greeting": "Hello, this is the Youxuan shop."}],
                        phone_idle_s=2.0, max_tokens=12)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def voice() -> EspeakSynthesizer:
    return EspeakSynthesizer()


def inbound_rows(stack: Stack, call_id: str) -> list[InboundRecord]:
    with stack.sessions() as s:
        return list(s.scalars(select(InboundRecord).where(InboundRecord.external_id.like(f"{call_id}:%"))
                              .order_by(InboundRecord.id)))


def kinds(stack: Stack, inbound_id: int) -> list[str]:
    with stack.sessions() as s:
        return list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == inbound_id).order_by(AuditEvent.id)))


def test_a_gateway_without_the_secret_is_refused(phone: Stack) -> None:
    with pytest.raises(InvalidStatus):
        PhoneLine.dial(phone.gateway.ws_url, "wrong-secret")


def test_a_full_call_greeting_two_questions_answers_heard_and_hang_up(phone: Stack, voice: EspeakSynthesizer) -> None:
    call = PhoneLine.dial(phone.gateway.ws_url, SECRET, call_id="full-1")
    wait_for(lambda: call.audio_ms() >= 1000, timeout=30)  # the greeting is playing
    call.wait_quiet(600)
    for question in ("hello, where is my order", "thank you, when will it arrive"):
        asked = time.monotonic()
        call.send_audio(voice.synthesize(question, 8000))
        call.silence(1000)
        wait_for(lambda asked=asked: call.audio_ms(since=asked + 0.05) >= 300, timeout=60)  # an answer is heard
        call.wait_quiet(600)  # to the end: a question asked over the answer would be a barge-in
    rows = wait_for(lambda: (r := inbound_rows(phone, "full-1")) and len(r) == 2 and r, timeout=30)
    assert all(row.channel == "phone" and row.kind == "voice" and row.text for row in rows)
    for row in rows:
        wait_for(lambda row=row: "dispatched" in kinds(phone, row.id), timeout=30)
        assert kinds(phone, row.id) == ["received", "queued", "generation_started", "generation_finished",
                                        "reply_stored", "dispatched"]
    with phone.sessions() as s:
        replies = list(s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id.in_([r.id for r in rows]))))
    assert len(replies) == 2 and all(r.text for r in replies)
    call.hang_up()


def test_key_zero_transfers_to_the_hotline_agent(phone: Stack) -> None:
    call = PhoneLine.dial(phone.gateway.ws_url, SECRET, call_id="dtmf-1", caller="+8613900001111")
    wait_for(lambda: call.audio_ms() >= 500, timeout=30)
    call.press("0")
    wait_for(lambda: any(isinstance(a, Transfer) for a in call.actions()), timeout=30)
    assert Transfer("8001") in call.actions()
    row = inbound_rows(phone, "dtmf-1")[0]
    assert (row.kind, row.text) == ("dtmf", "[dtmf 0]")
    assert kinds(phone, row.id) == ["received", "reply_stored", "dispatched"]


def test_a_transfer_ends_with_a_close_frame_1000(phone: Stack) -> None:
    call = PhoneLine.dial(phone.gateway.ws_url, SECRET, call_id="close-transfer", caller="+8613900003333")
    wait_for(lambda: call.audio_ms() >= 300, timeout=30)
    call.press("0")
    assert call.closed.wait(30)
    assert [a for a in call.actions() if isinstance(a, Transfer)] == [Transfer("8001")]
    assert (call.close_code, call.close_reason) == (1000, "transfer")  # not dropped (1006): the gateway can bridge


def test_a_hangup_frame_from_the_caller_is_answered_with_a_close_frame_1000(phone: Stack) -> None:
    call = PhoneLine.dial(phone.gateway.ws_url, SECRET, call_id="close-hangup", caller="+8613900004444")
    wait_for(lambda: call.audio_ms() >= 300, timeout=30)
    call.send_frame(encode_event(HangupIn("caller")))  # a gateway that waits for Kefu to close the socket
    assert call.closed.wait(10)
    assert (call.close_code, call.close_reason) == (1000, "call ended")


def test_a_malformed_frame_closes_the_socket_with_1003_and_what_was_wrong(phone: Stack) -> None:
    call = PhoneLine.dial(phone.gateway.ws_url, SECRET, call_id="close-bad", caller="+8613900005555")
    call.send_frame('{"type": "play"}')
    assert call.closed.wait(10)
    assert call.close_code == 1003 and "unknown frame type 'play'" in call.close_reason


def test_silence_gets_a_prompt_then_a_goodbye_and_a_hang_up(phone: Stack) -> None:
    call = PhoneLine.dial(phone.gateway.ws_url, SECRET, call_id="quiet-1", caller="+8613700002222")
    deadline = time.monotonic() + 60
    while not call.closed.is_set() and time.monotonic() < deadline:
        try:
            call.silence(100, realtime=True)  # a live line: silence keeps coming
        except ConnectionClosed:  # Kefu hung up
            break
    assert HangupOut("silence") in call.actions()
    assert call.audio_ms() >= 3000  # greeting, prompt and goodbye were spoken
    assert call.closed.wait(10)
    assert (call.close_code, call.close_reason) == (1000, "silence")  # a close frame, not a dropped socket (1006)


def ask_until_answer_starts(phone: Stack, voice: EspeakSynthesizer, call_id: str, question: str) -> PhoneLine:
    """Dial, let the greeting finish, ask, and return once Kefu has started to answer."""
    caller = f"+86135{zlib.crc32(call_id.encode()) % 10**8:08d}"  # one caller (conversation) per call
    call = PhoneLine.dial(phone.gateway.ws_url, SECRET, call_id=call_id, caller=caller)
    wait_for(lambda: call.audio_ms() >= 500, timeout=30)
    call.wait_quiet(600)
    asked = time.monotonic()
    call.send_audio(voice.synthesize(question, 8000))
    call.silence(1000)
    wait_for(lambda: call.audio_ms(since=asked + 0.05) >= 100, timeout=60)
    return call


def test_speaking_over_the_answer_clears_the_audio_and_keeps_only_what_was_heard(
        phone: Stack, voice: EspeakSynthesizer) -> None:
    call = ask_until_answer_starts(phone, voice, "barge-1", "please tell me everything about your return policy")
    call.send_audio(voice.synthesize("stop, wait", 8000), realtime=True)  # the caller talks over it
    wait_for(lambda: ClearAudio() in call.actions(), timeout=10)
    clear_at = next(h.at for h in call.heard if h.action == ClearAudio())
    call.silence(300, realtime=True)
    after = [h for h in list(call.heard) if h.audio and h.at > clear_at]
    assert len(after) <= 10  # at most 200 ms of audio after the clear: playback stopped at once
    row = inbound_rows(phone, "barge-1")[0]
    wait_for(lambda: "barge_in" in kinds(phone, row.id), timeout=10)
    with phone.sessions() as s:
        reply = wait_for(lambda: s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == row.id)).first(),
                         timeout=30)
        s.expire_all()
        text = s.scalars(select(ReplyRecord.text).where(ReplyRecord.inbound_id == row.id)).one()
    assert reply is not None and text.endswith("…")  # the history keeps what was heard, marked as cut off
    call.hang_up()


def test_hanging_up_mid_answer_keeps_only_what_was_heard(phone: Stack, voice: EspeakSynthesizer) -> None:
    call = ask_until_answer_starts(phone, voice, "gone-1", "tell me about your delivery options")
    call.hang_up()
    row = inbound_rows(phone, "gone-1")[0]
    wait_for(lambda: "barge_in" in kinds(phone, row.id), timeout=10)
    with phone.sessions() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.inbound_id == row.id, AuditEvent.kind == "barge_in")).one()
        assert event.detail["reason"] == "hangup"
        text = wait_for(lambda: s.scalars(select(ReplyRecord.text).where(ReplyRecord.inbound_id == row.id)).first(),
                        timeout=30)
    assert text.endswith("…")


def test_kefu_fake_pbx_dials_asks_and_hangs_up(phone: Stack, tmp_path: Path) -> None:
    """What an operator runs to try the phone channel: the PBX fake's command line, in a child process."""
    wav = tmp_path / "call.wav"
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", "fake", "pbx", "--url", f"{phone.gateway.ws_url}/v1/voice/ws",
         "--secret", SECRET, "--text", "hello, where is my order", "--caller", "+8613600003333", "--call-id", "cli-1",
         "--record", str(wav)],
        env=as_env({}), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"dialing {phone.gateway.ws_url}/v1/voice/ws" in done.stdout
    assert re.search(r"heard [1-9]\d* ms of greeting, said [1-9]\d* ms, heard [1-9]\d* ms of answer; hung up",
                     done.stdout), done.stdout
    assert wav.read_bytes()[:4] == b"RIFF"
    rows = inbound_rows(phone, "cli-1")
    assert rows and all(row.channel == "phone" and row.kind == "voice" and row.text for row in rows)


@pytest.fixture(scope="module")
def asterisk(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Iterator[tuple[Stack, int]]:
    """A stack with the AudioSocket listener (its port) and one voice gateway, whose secret reads the outcome."""
    port = free_port()
    stack = start_stack("embedded", tmp_path_factory.mktemp("audiosocket"), tiny_gguf, None, None,
                        audiosocket_port=port, hotlines=[{"number": "", "greeting": "Hello."}], phone_idle_s=1.0,
                        voice_gateways=[{"name": "asterisk", "secret": "s"}])
    try:
        yield stack, port
    finally:
        stack.close()


def outcome(stack: Stack, call_id: uuid.UUID) -> tuple[int, str]:
    """What the dialplan reads after ``AudioSocket()`` returns."""
    with stack.http() as http:
        answer = http.get(f"/v1/voice/outcome/{call_id}", params={"token": "s"})
    return answer.status_code, answer.text


def test_asterisk_audiosocket_gets_the_same_call(asterisk: tuple[Stack, int]) -> None:
    stack, port = asterisk
    call_id = uuid.uuid4()
    assert outcome(stack, call_id)[0] == 404  # not yet
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(asock.encode_message(asock.KIND_UUID, call_id.bytes))
        decoder = asock.AudioSocketDecoder()
        decoder.feed(asock.encode_message(asock.KIND_UUID, bytes(16)))  # our side of the parse: Kefu sends no UUID
        deadline = time.monotonic() + 60
        events = []
        while time.monotonic() < deadline:
            conn.settimeout(0.02)
            try:
                conn.sendall(asock.encode_message(asock.KIND_AUDIO, bytes(320)))  # the line's silence
                chunk = conn.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):  # Kefu hung up and closed the socket: read
                events += decoder.feed(_rest(conn))          # what it sent before (its hangup frame)
                break
            if not chunk:
                break
            events += decoder.feed(chunk)
    audio = [e for e in events if isinstance(e, AudioIn)]
    assert len(audio) > 20  # greeting, idle prompt and goodbye came back as slin frames
    assert max(len(e.pcm) for e in audio) == 320  # 20 ms messages (the last of an utterance may be shorter)
    assert type(events[-1]).__name__ == "HangupIn"  # then Kefu hung up (silence)
    assert outcome(stack, call_id) == (200, "hangup:silence")
    with stack.http() as http:
        assert http.get(f"/v1/voice/outcome/{call_id}").status_code == 401


def _kefu_says(wire: bytes) -> list[object]:
    """Kefu's messages in ``wire`` (everything it sent on one connection)."""
    decoder = asock.AudioSocketDecoder()
    decoder.feed(asock.encode_message(asock.KIND_UUID, bytes(16)))  # Kefu sends no UUID: prime the parser
    return list(decoder.feed(wire))


def _read_to_eof(conn: socket.socket, timeout: float = 20) -> bytes:
    conn.settimeout(timeout)
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(("bad", "expected"), [
    (struct.pack(">BH", 0x42, 0), "error:unknown type 0x42"),  # not an AudioSocket message type
    (asock.encode_message(asock.KIND_AUDIO, b"\x00\x00\x00"), "error:odd audio length"),
    (asock.encode_message(asock.KIND_ERROR, b"\x02"), "error:asterisk 2"),  # Asterisk's own error message
])
def test_a_broken_audiosocket_call_gets_a_hangup_then_eof_and_an_error_outcome(
        asterisk: tuple[Stack, int], bad: bytes, expected: str) -> None:
    stack, port = asterisk
    call_id = uuid.uuid4()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(asock.encode_message(asock.KIND_UUID, call_id.bytes))
        heard = conn.recv(65536)  # the greeting has started: the call is up
        assert heard
        conn.sendall(bad)
        heard += _read_to_eof(conn)
    said = _kefu_says(heard)
    assert heard.endswith(b"\x00\x00\x00") and said[-1] == HangupIn("caller")  # 0x00, then the socket closed
    assert all(isinstance(e, AudioIn) for e in said[:-1])
    assert outcome(stack, call_id) == (200, expected)


def test_audiosocket_garbage_in_the_same_segment_as_the_uuid_still_gets_its_outcome(
        asterisk: tuple[Stack, int]) -> None:
    stack, port = asterisk
    call_id = uuid.uuid4()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(asock.encode_message(asock.KIND_UUID, call_id.bytes) + asock.encode_message(0x02, b"x"))
        assert _read_to_eof(conn) == b"\x00\x00\x00"  # no call began: only the hangup, then EOF
    assert outcome(stack, call_id) == (200, "error:unknown type 0x02")


def _rest(conn: socket.socket) -> bytes:
    """Whatever is still in the socket's receive buffer (after the peer closed it)."""
    data = b""
    conn.settimeout(0.5)
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def test_an_agent_claiming_the_call_in_the_console_transfers_it(phone: Stack, voice: EspeakSynthesizer) -> None:
    call = PhoneLine.dial(phone.gateway.ws_url, SECRET, call_id="claim-1", caller="+8613900002222")
    wait_for(lambda: call.audio_ms() >= 500, timeout=30)
    call.wait_quiet(600)
    bus = make_bus(phone.settings)
    key = ConversationKey("phone", "4008001234", "+8613900002222")
    # a reply to no message (an agent's, a score request) on the call's topic: nothing to speak, the call goes on
    bus.publish(key.topic(), {"type": "reply", "reply_id": 0, "message_id": None, "text": "人工客服的消息"})
    question = time.monotonic()
    call.send_audio(voice.synthesize("hello, where is my order", 8000))
    call.silence(1000)
    asked = wait_for(lambda: inbound_rows(phone, "claim-1"), timeout=60)[0]
    wait_for(lambda: call.audio_ms(since=question + 0.05) >= 300, timeout=60)  # the model's answer is heard
    call.wait_quiet(600)
    assert not any(isinstance(a, Transfer) for a in call.actions())
    user_command.add(phone.sessions, "phone-agent", "agent", "话务员", lambda: "phone-agent-password")
    with httpx.Client(base_url=phone.gateway.http_url, timeout=10) as console:  # the agent claims it in the console
        form = re.search(r'name="csrf" value="([^"]+)"', console.get("/console/login").text)
        assert form is not None
        signed = console.post("/console/login", data={"username": "phone-agent", "password": "phone-agent-password",
                                                      "csrf": form.group(1)})
        assert signed.status_code == 303, signed.text
        csrf = console.get("/console/api/me").json()["csrf"]
        claimed_now = console.post(f"/console/api/conversations/{asked.conversation_id}/claim",
                                   headers={"X-CSRF-Token": csrf})
        assert claimed_now.status_code == 200, claimed_now.text
    wait_for(lambda: any(isinstance(a, Transfer) for a in call.actions()), timeout=30)
    assert [a for a in call.actions() if isinstance(a, Transfer)] == [Transfer("8001")]  # the hotline's agent line
    claimed = wait_for(lambda: [r for r in inbound_rows(phone, "claim-1") if r.kind == "event"], timeout=30)[0]
    assert claimed.text == "[console claim]" and kinds(phone, claimed.id) == ["received", "reply_stored", "dispatched"]
    with phone.sessions() as s:
        notice = s.scalars(select(ReplyRecord).where(ReplyRecord.inbound_id == claimed.id)).one()
        assert notice.source == "handoff"
    with phone.sessions() as session:  # a conversation of another channel is not a call: nothing is published
        web = desk.ensure_conversation(session, ConversationKey("web", "default", "visitor-x"))
        session.commit()
        assert not takeover.transfer_claimed_call(bus, session, web)
    call.hang_up()

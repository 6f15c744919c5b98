"""Call rules that need a recognizer the local English model cannot be: a scripted one stands in for ASR.

The call runs in-process against a real gateway (embedded database and bus), real espeak-ng speech and
real VAD; only the recognizer's answer is fixed.
"""

from __future__ import annotations

import asyncio
import math
import time
from array import array
from collections.abc import Awaitable, Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import select

from channels.app import build_services
from channels.speech.base import SpeechError
from channels.speech.espeak import EspeakSynthesizer
from channels.speech.fallback import FallbackSynthesizer
from channels.telephony.call import Call
from channels.telephony.config import Hotline, PhoneSettings
from channels.telephony.events import AudioIn, AudioOut, CallAction, CallStarted, HangupOut, Transfer, frame_bytes
from models.infra.migrate import upgrade
from models.settings import Settings
from models.tables import InboundRecord, ReplyRecord


class BrokenRecognizer:
    def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        raise SpeechError("NLS answered HTTP 503")


class DownSynthesizer:
    def synthesize(self, text: str, sample_rate: int) -> bytes:
        raise SpeechError("NLS answered HTTP 503")


class ScriptedRecognizer:
    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.heard: list[int] = []

    def transcribe(self, pcm: bytes, sample_rate: int) -> str:
        self.heard.append(len(pcm))
        return self.texts.pop(0) if self.texts else ""


class StreamingScript(ScriptedRecognizer):
    """A scripted recognizer that also streams (``begin``), counting the utterances it was asked to follow."""

    def __init__(self, *texts: str) -> None:
        super().__init__(*texts)
        self.begun = 0

    def begin(self, sample_rate: int) -> Any:
        self.begun += 1
        recognizer, audio = self, bytearray()

        class Stream:
            def feed(self, pcm: bytes) -> None:
                audio.extend(pcm)

            def close(self) -> None:
                pass

            def finish(self) -> str:
                return recognizer.transcribe(bytes(audio), sample_rate)

        return Stream()


def speech_like(ms: int, rate: int = 8000) -> bytes:
    n = rate * ms // 1000
    return array("h", (int(8000 * math.sin(2 * math.pi * 220 * i / rate)) for i in range(n))).tobytes()


Script = Callable[[Call, list[CallAction]], Awaitable[None]]  # the call, and the actions it took so far


def in_process_call(settings: Settings, script: Script, asr: Any = None, tts: Any = None,
                    call_id: str = "rules-1", timeline: list[float] | None = None) -> list[CallAction]:
    """A call on a real in-process gateway: ``script`` plays the caller, then the call runs until it ends.
    ``timeline``: when each action was taken (time.monotonic), in step with the returned actions."""
    upgrade(settings)

    async def scenario() -> list[CallAction]:
        gw = build_services(settings)
        await gw.listener.start()
        actions: list[CallAction] = []

        async def act(action: CallAction) -> None:
            actions.append(action)
            if timeline is not None:
                timeline.append(time.monotonic())

        call = Call(gw.context("phone"), CallStarted(call_id, "+8613600003333", "4008001234", 8000), act,
                    asr or ScriptedRecognizer(), tts or EspeakSynthesizer())
        await call.begin()
        await script(call, actions)
        for _ in range(800):  # the greeting and the notice are spoken in real time first
            if call.ended:
                break
            await asyncio.sleep(0.05)
        await call.end()
        await gw.listener.stop()
        gw.db.dispose()
        return actions

    return asyncio.run(scenario())


def run_call(tmp_path: Path, said: str, asr: Any = None, tts: Any = None,
             **settings_extra: object) -> tuple[list[CallAction], Settings]:
    settings = Settings(data_dir=tmp_path, **settings_extra)  # type: ignore[arg-type]

    async def speak(call: Call, actions: list[CallAction]) -> None:
        size = frame_bytes(8000)
        audio = bytes(size * 10) + speech_like(800) + bytes(size * 50)
        for i in range(0, len(audio), size):
            await call.on_event(AudioIn(audio[i : i + size]))

    return in_process_call(settings, speak, asr or ScriptedRecognizer(said), tts), settings


def test_asking_for_a_person_says_so_and_transfers(tmp_path: Path) -> None:
    actions, settings = run_call(tmp_path, "我要转人工",
                                 hotlines=[{"number": "4008001234", "transfer_to": "8001", "greeting": "您好。"}])
    assert Transfer("8001") in actions
    assert sum(1 for a in actions if not isinstance(a, (Transfer, HangupOut))) > 50  # greeting + notice spoken first
    from models.infra.db import make_engine, make_session_factory

    sessions = make_session_factory(make_engine(settings))
    with sessions() as s:
        row = s.scalars(select(InboundRecord)).one()
        reply = s.scalars(select(ReplyRecord)).one()
    assert (row.channel, row.kind, row.text) == ("phone", "voice", "我要转人工")
    assert (reply.source, reply.text) == ("handoff", settings.section(PhoneSettings).phone_transfer_notice)


def test_without_an_agent_number_asking_for_a_person_gets_an_honest_answer_and_the_call_goes_on(tmp_path: Path) -> None:
    actions, settings = run_call(tmp_path, "转人工", phone_idle_s=1.0,
                                 hotlines=[{"number": "4008001234", "greeting": "您好。"}])
    assert not any(isinstance(a, Transfer) for a in actions)
    assert HangupOut("no agent available") not in actions and HangupOut("silence") in actions  # not hung up on
    from models.infra.db import make_engine, make_session_factory

    with make_session_factory(make_engine(settings))() as s:
        reply = s.scalars(select(ReplyRecord)).one()
    assert (reply.source, reply.text) == ("rule", settings.handoff_unavailable_reply)


def test_key_0_without_an_agent_number_gets_an_apology_not_silence(tmp_path: Path) -> None:
    from channels.telephony.events import DtmfIn

    settings = Settings(data_dir=tmp_path, hotlines=[Hotline(number="4008001234", greeting="您好。")])

    async def press_0(call: Call, actions: list[CallAction]) -> None:
        await call.on_event(DtmfIn("0"))

    actions = in_process_call(settings, press_0, call_id="rules-no-agent")
    assert not any(isinstance(a, Transfer) for a in actions)
    assert HangupOut("no agent available") in actions


def test_speech_services_down_get_a_spoken_apology_and_a_transfer_not_silence(tmp_path: Path) -> None:
    tts = FallbackSynthesizer(DownSynthesizer(), EspeakSynthesizer())  # cloud TTS down too: the local voice speaks
    actions, settings = run_call(tmp_path, "", asr=BrokenRecognizer(), tts=tts,
                                 hotlines=[{"number": "4008001234", "transfer_to": "8001", "greeting": "您好。"}])
    spoken = sum(1 for a in actions if not isinstance(a, (Transfer, HangupOut)))
    assert Transfer("8001") in actions and spoken > 50  # the apology was heard before the transfer
    from models.infra.db import make_engine, make_session_factory

    with make_session_factory(make_engine(settings))() as s:
        reply = s.scalars(select(ReplyRecord)).one()
    assert reply.source == "handoff" and reply.text.startswith(settings.section(PhoneSettings).phone_speech_failed)


def test_key_0_during_the_greeting_cuts_it_and_transfers_without_holding_up_the_line(tmp_path: Path) -> None:
    from channels.telephony.events import ClearAudio, DtmfIn

    greeting = "您好，欢迎致电优选商城，我们的营业时间是每天早上九点到晚上九点。"
    settings = Settings(data_dir=tmp_path, hotlines=[Hotline(number="4008001234", transfer_to="8001", greeting=greeting)])
    right_after: list[CallAction] = []

    async def press_0_during_the_greeting(call: Call, actions: list[CallAction]) -> None:
        for _ in range(1000):
            if call.player.playing:
                break
            await asyncio.sleep(0.01)
        assert call.player.playing, "the greeting never started"
        await call.on_event(DtmfIn("0"))
        right_after.extend(actions)  # the key press returned before the transfer was carried out

    actions = in_process_call(settings, press_0_during_the_greeting, call_id="rules-2")
    assert Transfer("8001") not in right_after
    clear, transfer = actions.index(ClearAudio()), actions.index(Transfer("8001"))
    assert clear < transfer  # the greeting was cut, then the notice played, then the transfer
    assert sum(1 for a in actions[clear:transfer] if not isinstance(a, (ClearAudio, Transfer))) > 50  # the notice


def test_an_faq_question_on_the_phone_is_answered_at_once_without_the_model(tmp_path: Path) -> None:
    from models.settings import FaqEntry

    faq = FaqEntry(keywords=["营业时间"], answer="我们每天早上九点到晚上九点营业。")
    actions, settings = run_call(tmp_path, "请问营业时间是几点", faq=[faq], phone_idle_s=1.0,
                                 hotlines=[{"number": "4008001234", "greeting": "您好。"}])
    from models.infra.db import make_engine, make_session_factory
    from models.tables import AuditEvent

    with make_session_factory(make_engine(settings))() as s:
        row = s.scalars(select(InboundRecord)).one()
        reply = s.scalars(select(ReplyRecord)).one()
        kinds = list(s.scalars(select(AuditEvent.kind).where(AuditEvent.inbound_id == row.id)))
    assert (row.text, row.status) == ("请问营业时间是几点", "answered")
    assert (reply.source, reply.text) == ("faq", faq.answer)
    assert "queued" not in kinds  # the model never saw it
    assert HangupOut("silence") in actions  # and the call went on as usual


def test_a_moderation_hand_off_on_the_phone_transfers_and_is_audited(tmp_path: Path) -> None:
    words = tmp_path / "moderation.txt"
    words.write_text("投诉升级 hand_off\n", encoding="utf-8")
    actions, settings = run_call(tmp_path, "我要投诉升级", moderation_file=words,
                                 hotlines=[{"number": "4008001234", "transfer_to": "8001", "greeting": "您好。"}])
    assert Transfer("8001") in actions
    from models.infra.db import make_engine, make_session_factory
    from models.tables import AuditEvent

    with make_session_factory(make_engine(settings))() as s:
        moderated = [e.detail for e in s.scalars(select(AuditEvent).where(AuditEvent.kind == "moderated"))]
    assert moderated == [{"direction": "in", "action": "hand_off", "rule": "keyword:1"}]


# ---- the keypad menu (channels/telephony/keypad.py) ------------------------------------------------------------

MENU = {"prompt": "查询订单请按1，营业时间请按2，人工服务请按0。",
        "keys": {"1": {"action": "ask", "text": "我要查询订单"},
                 "2": {"action": "say", "text": "我们每天早上九点到晚上九点营业。"}}}
MENU_LINE = {"number": "4008001234", "greeting": "您好。", "transfer_to": "8001", "menu": MENU}


class RecordingVoice:
    """espeak-ng, remembering each text it was asked to synthesize (a prompt said twice is synthesized once)."""

    def __init__(self) -> None:
        self.voice = EspeakSynthesizer()
        self.said: list[str] = []

    def synthesize(self, text: str, sample_rate: int) -> bytes:
        self.said.append(text)
        return self.voice.synthesize(text, sample_rate)


def press(*digits: str) -> Script:
    async def script(call: Call, actions: list[CallAction]) -> None:
        from channels.telephony.events import DtmfIn

        for digit in digits:
            await call.on_event(DtmfIn(digit))
            await asyncio.sleep(0.3)

    return script


def stored(settings: Settings) -> list[tuple[str, str, str, str, str]]:
    """(inbound kind, inbound text, inbound status, reply source, reply text) of each stored message, in order."""
    from models.infra.db import make_engine, make_session_factory

    engine = make_engine(settings)
    with make_session_factory(engine)() as s:
        rows = s.execute(select(InboundRecord, ReplyRecord).join(ReplyRecord, ReplyRecord.inbound_id == InboundRecord.id)
                         .order_by(InboundRecord.id)).all()
        found = [(i.kind, i.text, i.status, r.source, r.text) for i, r in rows]
    engine.dispose()
    return found


def test_the_menu_prompt_follows_the_greeting_and_key_1_asks_its_question_answered_like_a_spoken_one(
        tmp_path: Path) -> None:
    from channels.telephony.events import ClearAudio
    from models.settings import FaqEntry

    faq = FaqEntry(keywords=["查询订单"], answer="请告诉我您的订单号，我来帮您查询。")
    settings = Settings(data_dir=tmp_path, faq=[faq], phone_idle_s=1.0, hotlines=[MENU_LINE])
    voice = RecordingVoice()
    actions = in_process_call(settings, press("1"), tts=voice, call_id="menu-ask")
    assert voice.said[:2] == ["您好。", MENU["prompt"]]  # the greeting, then the menu
    assert ClearAudio() in actions  # key 1 pressed over the prompt cut it
    assert faq.answer in voice.said
    assert stored(settings) == [("dtmf", "我要查询订单", "answered", "faq", faq.answer)]  # decided like speech
    assert HangupOut("silence") in actions and not any(isinstance(a, Transfer) for a in actions)


def test_key_2_says_its_text_and_an_unknown_key_repeats_the_menu(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, phone_idle_s=1.0, hotlines=[MENU_LINE])
    voice = RecordingVoice()
    actions = in_process_call(settings, press("2", "7"), tts=voice, call_id="menu-say")
    say = MENU["keys"]["2"]["text"]  # type: ignore[index]
    assert say in voice.said
    assert stored(settings) == [("dtmf", "[dtmf 2]", "answered", "rule", say),
                                ("dtmf", "[dtmf 7]", "answered", "rule", MENU["prompt"])]
    assert not any(isinstance(a, Transfer) for a in actions)


def test_a_keys_only_hotline_works_without_a_recognizer_for_its_language(tmp_path: Path) -> None:
    from channels.telephony import asr_language
    from channels.telephony.events import DtmfIn
    from models.settings import FaqEntry

    faq = FaqEntry(keywords=["查询订单"], answer="请告诉我您的订单号，我来帮您查询。")
    line = {**MENU_LINE, "menu": {**MENU, "keys_only": True}}
    settings = Settings(data_dir=tmp_path, faq=[faq], phone_idle_s=1.0, hotlines=[line])
    # the default recognizer (pocketsphinx, English) is no obstacle to this line at start-up
    asr_language.check(settings.model_copy(update={"voice_gateways": [{"name": "pbx", "secret": "s"}]}))
    english_only = StreamingScript("what a sorry day")  # what pocketsphinx makes of Mandarin

    async def speak_then_press_1(call: Call, actions: list[CallAction]) -> None:
        size = frame_bytes(8000)
        audio = bytes(size * 10) + speech_like(800) + bytes(size * 50)
        for i in range(0, len(audio), size):
            await call.on_event(AudioIn(audio[i : i + size]))
        await call.on_event(DtmfIn("1"))

    in_process_call(settings, speak_then_press_1, asr=english_only, call_id="menu-keys-only")
    assert english_only.heard == [] and english_only.begun == 0  # no recognition is even started on this line
    assert stored(settings) == [("dtmf", "我要查询订单", "answered", "faq", faq.answer)]


def test_on_a_menu_line_saying_zhuan_rengong_transfers(tmp_path: Path) -> None:
    actions, settings = run_call(tmp_path, "我要转人工", hotlines=[MENU_LINE])
    assert Transfer("8001") in actions
    assert [(kind, text) for kind, text, *_ in stored(settings)] == [("voice", "我要转人工")]


def test_on_a_menu_line_key_0_transfers(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, hotlines=[MENU_LINE])
    actions = in_process_call(settings, press("0"), call_id="menu-0")
    assert Transfer("8001") in actions
    assert [(kind, text, source) for kind, text, _, source, _ in stored(settings)] == [("dtmf", "[dtmf 0]", "handoff")]


def test_the_silence_prompt_comes_the_idle_time_after_the_greeting_ended_not_earlier(tmp_path: Path) -> None:
    """The idle clock starts when the last frame of the greeting went out (it used to start whenever a 1 s check
    happened to see the player idle, so the prompt came up to a check interval early)."""
    settings = Settings(data_dir=tmp_path, phone_idle_s=2.0)  # type: ignore[call-arg]
    timeline: list[float] = []

    async def stay_silent(call: Call, actions: list[CallAction]) -> None:
        size = frame_bytes(8000)
        for _ in range(300):  # 6 s of line silence, in real time: the prompt and then the goodbye come meanwhile
            await call.on_event(AudioIn(bytes(size)))
            await asyncio.sleep(0.02)
            if call.ended:
                return

    actions = in_process_call(settings, stay_silent, timeline=timeline)
    audio = [at for action, at in zip(actions, timeline, strict=True) if isinstance(action, AudioOut)]
    gaps = [(later - earlier, earlier) for earlier, later in pairwise(audio) if later - earlier > 0.5]
    assert len(gaps) == 2, gaps  # greeting ··· prompt ··· goodbye
    for gap, _ in gaps:  # from the last frame sent to the next sentence's first: the idle time, not less
        assert 2.0 - 0.05 <= gap <= 2.0 + 0.6, gaps
    assert isinstance(actions[-1], HangupOut) and actions[-1].reason == "silence"

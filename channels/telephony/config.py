"""The phone channel's settings: the voice gateways allowed to stream calls, the hotlines, what a call says."""

from __future__ import annotations

import hmac
import os
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from channels.telephony.keypad import NO_MENU, KeypadMenu
from models.settings import Section


class VoiceGateway(BaseModel):
    """A PBX voice gateway allowed to stream calls to Kefu (``Authorization: Bearer <secret>``)."""

    name: str
    secret: SecretStr


class Hotline(BaseModel):
    """A called number: its greeting, its keypad menu, and where 转人工 / key 0 transfers the caller."""

    number: str
    greeting: str | None = None
    transfer_to: str | None = None
    menu: KeypadMenu | None = None  # a prompt after the greeting and what each key does (channels/telephony/keypad.py)

    def keypad(self) -> KeypadMenu:
        return self.menu or NO_MENU


class PhoneSettings(Section):
    voice_gateways: list[VoiceGateway] = Field(default_factory=list)  # JSON list in KEFU_VOICE_GATEWAYS
    hotlines: list[Hotline] = Field(default_factory=list)  # JSON list in KEFU_HOTLINES
    # What a caller hears first.
    phone_greeting: str = "您好，欢迎致电，我是智能客服，请问有什么可以帮您？"
    phone_transfer_to: str | None = None  # default transfer target when the hotline names none
    # What a caller hears before a transfer to a person.
    phone_transfer_notice: str = "好的，正在为您转接人工客服，请稍候。"
    # What a silent caller hears (after the idle time).
    phone_idle_prompt: str = "请问您还在吗？有什么可以帮您？"
    # What a caller hears before Kefu hangs up.
    phone_goodbye: str = "感谢您的来电，再见。"
    # What a caller who asks for a person hears where no agent number is configured.
    phone_no_agent: str = "抱歉，现在没有人工客服可以接听，请您稍后再拨。"
    phone_speech_failed: str = "抱歉，语音识别暂时出现故障。"  # said before the transfer when recognition is down
    phone_silence_ms: int = 600  # end of an utterance
    phone_idle_s: float = 10.0  # silence before the prompt, and again before the goodbye
    # Speech processes beside the gateway that run recognition and synthesis for its calls (None: one per CPU
    # core, at most 8; 0: in the gateway's own process, which cannot hold more than a few simultaneous callers).
    phone_speech_processes: int | None = Field(default=None, ge=0, le=64)
    # A hotline greeting in Chinese with a recognizer that cannot understand Chinese (pocketsphinx): "refuse" stops
    # the gateway at start-up, "warn" starts it with an ERROR line (channels/telephony/asr_language.py)
    phone_asr_language_check: Literal["refuse", "warn"] = "refuse"
    audiosocket_port: int | None = None  # Asterisk AudioSocket over TCP (off unless set)
    # The addresses the AudioSocket listener accepts calls from (the PBX's).
    audiosocket_allowed_ips: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1"])

    def speech_processes(self) -> int:
        if self.phone_speech_processes is not None:
            return self.phone_speech_processes
        return min(8, os.cpu_count() or 1)

    def hotline(self, number: str) -> Hotline:
        configured = next((h for h in self.hotlines if h.number == number), None)
        return configured or Hotline(number=number)

    def voice_gateway(self, secret: str) -> VoiceGateway | None:
        return next((g for g in self.voice_gateways
                     if hmac.compare_digest(g.secret.get_secret_value().encode(), secret.encode())), None)

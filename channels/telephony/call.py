"""One phone call, on the gateway: listen, hand each utterance to the pipeline, speak the answer.

The call sees only :mod:`~channels.telephony.events` (any wire codec feeds it) and acts through
``act`` (the codec sends the action). Flow:

1. ``CallStarted`` → the hotline's greeting is synthesized and played.
2. Caller audio → :class:`~channels.telephony.vad.Endpointer`; each finished utterance is
   transcribed (in a thread) and becomes an inbound message of the call's conversation
   (``ConversationKey("phone", <hotline number>, <caller number>)``), audited like every channel.
   "转人工" (the hand-off keywords) or key 0 → the transfer notice, then ``Transfer`` to the hotline's
   agent number (audited); with no agent number configured, an apology instead. An FAQ hit is spoken
   at once without the model (the same decision as every channel: ``models.dialogue.decide``).
3. The LLM worker streams the answer to this gateway over the bus (``channels.telephony.outbound``);
   it is cut into sentences, each synthesized and played as soon as it is complete, in real time.
4. Barge-in: speech detected while Kefu is talking → ``ClearAudio`` at once, the rest of the answer
   dropped, the generation cancelled (a flag the worker's stream callback checks), and the stored
   answer shortened to what the caller heard (audited as ``barge_in``).
5. Silence for ``phone_idle_s`` → a prompt; as long again → the goodbye and ``HangupOut``.
6. An agent claimed the conversation in the console (a ``transfer`` event on the call's topic,
   :mod:`channels.telephony.takeover`) → the same transfer as key 0, its inbound ``[console claim]``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from starlette.concurrency import run_in_threadpool

from channels.admission import admit, refused_answer
from channels.ingress import Accepted
from channels.speech.base import Recognizer, SpeechError, Synthesizer
from channels.speech.live import synthesis_chunks, transcript
from channels.telephony.config import PhoneSettings
from channels.telephony.events import (
    AudioIn,
    AudioOut,
    CallAction,
    CallEvent,
    CallStarted,
    ClearAudio,
    DtmfIn,
    GatewayError,
    HangupIn,
    HangupOut,
    Transfer,
    mask_number,
)
from channels.telephony.keypad import MenuChoice
from channels.telephony.outbound import CANCEL_KEY, HEARD_KEY, INTERRUPTED_MARK
from channels.telephony.speaking import PROMPTS, Player, SentenceSplitter
from channels.telephony.takeover import TRANSFER
from channels.telephony.vad import Endpointer, SpeechStarted, UtteranceEnded
from models import audit, pii
from models.dialogue import Action, Message, decide
from models.envelope import ConversationKey, Inbound, printable
from models.infra.db import transaction
from models.replies import Answer
from models.states import ReplySource
from models.tables import ReplyRecord

if TYPE_CHECKING:
    from channels.base import ChannelContext

log = logging.getLogger(__name__)

CHANNEL = "phone"
INTERRUPT_TTL_S = 600

Act = Callable[[CallAction], Awaitable[None]]


class Call:
    def __init__(self, ctx: ChannelContext, started: CallStarted, act: Act, asr: Recognizer, tts: Synthesizer) -> None:
        settings = ctx.settings
        self.ctx, self.started, self._act, self._asr, self._tts = ctx, started, act, asr, tts
        self.phone = settings.section(PhoneSettings)
        self.hotline = self.phone.hotline(started.callee)
        self.key = ConversationKey(CHANNEL, started.callee or "default", started.caller or f"call:{started.call_id}")
        self.rate = started.sample_rate
        self.endpointer = Endpointer(self.rate, silence_ms=self.phone.phone_silence_ms)
        self.player = Player(self._send_audio, self.rate)
        self._utterances = 0
        # external ids are "<call id>:<leg>:<n>": a gateway that reconnects with the same call id starts a new leg,
        # whose utterances must not be taken for platform retries of the first leg's
        self._leg = uuid.uuid4().hex[:8]
        self._previous_utterance: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._splitters: dict[int, SentenceSplitter] = {}
        self._accepted: dict[int, Accepted] = {}
        self._answered: set[int] = set()  # its reply arrived (or it was interrupted): nothing more to speak
        self._interrupted: set[int] = set()
        self._last_activity = time.monotonic()
        self._prompted = False
        self.ended = False
        self._speech_lock = asyncio.Lock()  # sentences are synthesized and queued in order
        self._stream: Any = None  # the streaming transcription of the utterance in progress
        self._transferring = False
        self._listening = not self.hotline.keypad().keys_only  # a keypad-only hotline recognizes no speech

    # ---- lifecycle --------------------------------------------------------------------------------

    async def begin(self) -> None:
        log.info("call %s from %s to %s (%d Hz)", self.started.call_id, mask_number(self.started.caller),
                 self.started.callee, self.rate)
        self.player.start()
        self._events = self.ctx.listener.subscribe(self.key.topic())
        self._spawn(self._follow_answers())
        self._spawn(self._watch_silence())
        await self.say(self.hotline.greeting or self.phone.phone_greeting)
        await self.say(self.hotline.keypad().prompt)  # the keypad menu's, if any (nothing is said for "")

    async def end(self) -> None:
        self.ended = True
        if self._stream is not None:  # an utterance cut off by the hang-up: its recognizer is told, not awaited
            getattr(self._stream, "cancel", self._stream.close)()
            self._stream = None
        try:
            unfinished = [m for m in self._splitters if m not in self._answered or self._unheard(m)]
            for message_id in unfinished:  # hung up mid-answer: stop generating, keep what was heard
                self._interrupted.add(message_id)
                await run_in_threadpool(self._record_interruption, message_id, self.player.heard_for(message_id),
                                        0, "hangup")
        finally:  # whatever failed above, the call's tasks, player and subscription go
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.player.stop()
            self.ctx.listener.unsubscribe(self.key.topic(), self._events)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: %s", self.started.call_id, type(task.exception()).__name__, exc_info=task.exception())

    # ---- from the gateway -------------------------------------------------------------------------

    async def on_event(self, event: CallEvent) -> None:
        if isinstance(event, AudioIn):
            await self._audio_in(event.pcm)
        elif isinstance(event, DtmfIn):
            self._last_activity = time.monotonic()
            choice = self.hotline.keypad().on_digit(event.digit)  # without a menu: key 0 transfers
            if choice is not None:  # on its own task: the frame reader must keep reading (hang-up, audio)
                self._spawn(self._pressed(event.digit, choice, self._external_id()))
        elif isinstance(event, HangupIn):
            self.ended = True
        elif isinstance(event, GatewayError):  # the PBX's side of the call broke (AudioSocket 0xff)
            log.warning("call %s: the gateway reported error %s: %s", self.started.call_id, event.code, event.message)
            self.ended = True

    async def _audio_in(self, pcm: bytes) -> None:
        """A frame of the caller's audio: endpointing, streaming recognition, barge-in, a finished utterance."""
        was_in_speech = self.endpointer.in_speech
        found_events = self.endpointer.feed(pcm)
        if was_in_speech and self.endpointer.in_speech and self._stream is not None:
            self._stream.feed(pcm)  # recognized while the caller speaks
        for found in found_events:
            self._last_activity = time.monotonic()
            if isinstance(found, SpeechStarted):
                begin = getattr(self._asr, "begin", None)
                if begin is not None and self._listening:
                    self._stream = begin(self.rate)
                    self._stream.feed(self.endpointer.utterance_so_far())
                if self.player.playing:
                    await self._barge_in()
            elif isinstance(found, UtteranceEnded) and self._listening:
                self._prompted = False
                stream, self._stream = self._stream, None
                if stream is not None:
                    stream.close()  # ended now, even if its task is cancelled before it runs
                task = asyncio.ensure_future(self._utterance(found.pcm, stream, self._external_id(),
                                                             self._previous_utterance))
                self._previous_utterance = task
                self._tasks.add(task)
                task.add_done_callback(self._task_done)

    def _external_id(self) -> str:
        """Numbered when the caller stops speaking, so the ids follow the order things were said."""
        self._utterances += 1
        return f"{self.started.call_id}:{self._leg}:{self._utterances}"

    async def _utterance(self, pcm: bytes, stream: Any, external_id: str,
                         previous: asyncio.Task[Any] | None) -> None:
        try:
            if stream is not None:  # every frame was fed while the caller spoke: only the end is left
                recognized = await transcript(stream)
            else:
                recognized = await run_in_threadpool(self._asr.transcribe, pcm, self.rate)
            text = printable(recognized).strip()
        except SpeechError as exc:  # the recognizer is down: say so and hand the caller to a person
            log.error("speech recognition failed on call %s: %s", self.started.call_id, exc)
            await self._transfer(Inbound(self.key, external_id, "[not recognized]", "voice"),
                                 self.phone.phone_speech_failed)
            return
        if previous is not None:  # recognized concurrently; accepted in the order they were said
            await asyncio.wait([previous])
        if not text:
            return
        await self._said(Inbound(self.key, external_id, text[: self.ctx.settings.max_text_chars], "voice"))

    async def _pressed(self, digit: str, choice: MenuChoice, external_id: str) -> None:
        """A key of the hotline's keypad menu: a transfer, a fixed text said, or a fixed question asked."""
        if choice.action == "transfer":
            await self._transfer(Inbound(self.key, external_id, f"[dtmf {digit}]", "dtmf"))
            return
        if self.player.playing:  # a key pressed over the prompt (or an answer) skips the rest of it
            await self._barge_in("keypad")
        if choice.action == "ask":  # as if the caller had said it
            await self._said(Inbound(self.key, external_id, choice.text, "dtmf"))
            return
        await run_in_threadpool(self.ctx.ingress.accept_answered, Inbound(self.key, external_id, f"[dtmf {digit}]",
                                "dtmf"), Answer(choice.text, ReplySource.RULE, why="keypad"))
        await self.say(choice.text)

    async def _said(self, inbound: Inbound) -> None:
        """What the caller said (or a keypad ``ask`` stands for): a hand-off, an answer at once, or the model."""
        message = Message(inbound.text, "voice", channel=self.key.channel, follows_up=self.ctx.handoff.from_worker)
        # off the event loop: moderation may read its file or call its endpoint (KEFU_MODERATION_TIMEOUT_S)
        decision = await run_in_threadpool(
            lambda: decide(self.ctx.settings, message, self.ctx.handoff.availability(self.key.account)))
        if decision.action is Action.HAND_OFF:
            await self._transfer(inbound, why=decision.why)  # audited like any channel's (e.g. ``moderated``)
            return
        if decision.action is Action.ANSWER:  # e.g. an FAQ answer: spoken at once, no model (stored as delivered)
            await run_in_threadpool(self.ctx.ingress.accept_answered, inbound, decision.answer())
            await self.say(decision.text)
            return
        refusal = await run_in_threadpool(admit, self.ctx.admission, self.key)  # the caller's limit, backpressure
        if refusal is not None:  # stored and told to wait (spoken, so stored as delivered), not sent to the model
            answer = refused_answer(self.ctx.admission, refusal)
            await run_in_threadpool(self.ctx.ingress.accept_answered, inbound, answer)
            await self.say(answer.text)
            return
        accepted = await run_in_threadpool(self.ctx.ingress.accept, inbound)
        self._accepted[accepted.inbound_id] = accepted
        self._splitters[accepted.inbound_id] = SentenceSplitter()

    async def _transfer(self, inbound: Inbound, reason: str = "", why: str | None = None) -> None:
        if self._transferring:  # key 0 and an agent's claim at once: one transfer
            return
        self._transferring = True
        target = self.hotline.transfer_to or self.phone.phone_transfer_to
        notice = reason + (self.phone.phone_transfer_notice if target else self.phone.phone_no_agent)
        if self.player.playing or self._waiting_for_answer():  # the notice must not wait behind the answer
            await self._barge_in("transfer")
        await run_in_threadpool(self.ctx.ingress.accept_answered, inbound,
                                Answer(notice, ReplySource.HANDOFF, why=why or ("transfer" if target else "no_agent")))
        await self.say(notice)
        await self.player.wait_idle()
        if target:
            await self._act(Transfer(target))
        else:
            await self._act(HangupOut("no agent available"))
        self.ended = True

    async def _barge_in(self, reason: str = "barge_in") -> None:
        """The caller speaks over Kefu (or asks for a person): stop the audio now, stop the generation,
        remember what was heard."""
        dropped = self.player.clear()
        cut = ({tag for tag, _ in dropped if tag} | {m for m in self._splitters if m not in self._answered}) \
            - self._interrupted
        self._interrupted |= cut  # before any await: a sentence synthesized meanwhile must not be queued
        self._answered |= cut
        await self._act(ClearAudio())
        for message_id in cut:
            heard = self.player.heard_for(message_id)
            await run_in_threadpool(self._record_interruption, message_id, heard, len(dropped), reason)

    def _unheard(self, message_id: int) -> bool:
        """Some of its sentences are still queued (the caller will not hear them now)."""
        return message_id in self.player.queued_tags()

    def _record_interruption(self, message_id: int, heard: str, dropped: int, reason: str) -> None:
        heard = pii.mask(heard)  # streamed speech masks numbers, not addresses; this replaces the stored reply
        kv = self.ctx.kv
        kv.set(HEARD_KEY.format(message_id), heard, INTERRUPT_TTL_S)  # before the flag: the worker reads it after
        kv.set(CANCEL_KEY.format(message_id), "1", INTERRUPT_TTL_S)
        # An answer already stored is shortened to what was heard: the history must not claim more.
        with transaction(self.ctx.sessions) as session:
            session.execute(update(ReplyRecord).where(ReplyRecord.inbound_id == message_id)
                            .values(text=heard + INTERRUPTED_MARK))
        accepted = self._accepted.get(message_id)
        if accepted is not None:
            self.ctx.ingress.note(accepted, CHANNEL, audit.BARGE_IN, heard_chars=len(heard), dropped_sentences=dropped,
                                 reason=reason)

    # ---- answers from the worker ------------------------------------------------------------------

    async def _follow_answers(self) -> None:
        while True:
            event = await self._events.get()
            if event.get("type") == TRANSFER:  # an agent claimed the conversation in the console
                if not self.ended and not self._transferring:
                    self._spawn(self._transfer(Inbound(self.key, self._external_id(), "[console claim]", "event"),
                                               why="console_claim"))
                continue
            message_id = int(event.get("message_id") or 0)  # None: an agent's message, nothing to speak
            splitter = self._splitters.get(message_id)
            if splitter is None or message_id in self._answered:
                continue
            if event.get("type") == "token":
                for sentence in splitter.feed(str(event.get("text", ""))):
                    await self.say(sentence, message_id)
            elif event.get("type") == "reply":
                self._answered.add(message_id)
                rest = splitter.flush()
                if not rest and not splitter.spoke:  # no tokens were streamed to us: speak it all
                    rest = [str(event.get("text", ""))]
                for sentence in rest:
                    await self.say(sentence, message_id)

    # ---- speaking -----------------------------------------------------------------------------------

    async def say(self, text: str, tag: int = 0) -> None:
        """Speak ``text``: its audio plays as it is synthesized (the first chunk goes out at once), after what
        is already queued. Sentences are synthesized one at a time, in order."""
        text = text.strip()
        if not text or tag in self._interrupted:
            return
        async with self._speech_lock:
            cached = PROMPTS.get(self._tts, text, self.rate) if tag == 0 else None  # a fixed prompt said before
            if cached is not None:
                self.player.say(text, cached, tag)
            else:
                await self._synthesize(text, tag)
        self._last_activity = time.monotonic()

    async def _synthesize(self, text: str, tag: int) -> None:
        utterance = None
        audio = bytearray()
        whole = False
        clears = self.player.clears  # a barge-in before its first audio drops this sentence too
        chunks = synthesis_chunks(self._tts, text, self.rate)
        try:
            async for chunk in chunks:
                if tag in self._interrupted or self.player.clears != clears:
                    return  # the caller spoke over it while it was being synthesized: stop synthesizing
                if utterance is None:
                    utterance = self.player.open(text, tag)
                self.player.extend(utterance, chunk)
                audio += chunk
            whole = True
        except Exception as exc:  # nothing (more) to say this time; the call itself goes on
            log.error("speech synthesis failed on call %s: %s: %s", self.started.call_id, type(exc).__name__, exc)
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
            if utterance is not None:
                self.player.complete(utterance)
        if whole and tag == 0 and audio:
            PROMPTS.put(self._tts, text, self.rate, bytes(audio))

    async def _send_audio(self, frame: bytes) -> None:
        await self._act(AudioOut(frame))

    async def _watch_silence(self) -> None:
        """``phone_idle_s`` after the caller last spoke or pressed a key and Kefu last finished speaking (the
        player's last frame, not when this loop happened to look): a prompt, then as long again the goodbye."""
        idle = self.phone.phone_idle_s
        while True:
            if self.player.playing or self.endpointer.in_speech or self._waiting_for_answer():
                self._last_activity = time.monotonic()  # within 50 ms; the player's idle_since is exact
                await asyncio.sleep(0.05)
                continue
            remaining = max(self._last_activity, self.player.idle_since) + idle - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(min(remaining, 0.25))
                continue
            if not self._prompted:
                self._prompted = True
                await self.say(self.phone.phone_idle_prompt)
                continue
            await self.say(self.phone.phone_goodbye)
            await self.player.wait_idle()
            await self._act(HangupOut("silence"))
            self.ended = True
            return

    def _waiting_for_answer(self) -> bool:
        return any(message_id not in self._answered for message_id in self._splitters)

"""The one dialogue decision: what happens to a customer's message before any model sees it.

:func:`decide` is pure. Every channel calls it with the customer's message and what the channel
can do about a request for a person (:class:`HandOff`); it returns a :class:`Decision` — answer
now with a fixed text, hand the conversation to a person, or let the model answer — and says
why. Channels only carry the decision out (through their hand-off port, their ingress calls);
they never look at the customer's words themselves.

The decision runs its :data:`RULES` in order, the first that speaks wins. Moderation is the first
rule after an empty message (:func:`moderated`; it is the one rule that may do I/O: reading the
operator's keyword file when it changed, calling a moderation endpoint when one is configured).
Knowledge-base answers and intents plug in here as further rules, so that every channel gets them at once.

What the model is told and what a customer hears when the model fails also follow the channel:
:func:`system_prompt` and :func:`fallback_reply` mention 转人工 only where a person can take over.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from models import moderation
from models.knowledge import faq_cache
from models.replies import MODERATED, Answer
from models.settings import Settings
from models.states import ReplySource

UNSUPPORTED = {
    "voice": "抱歉，我暂时还听不懂语音消息，请用文字描述您的问题。",
    "image": "已收到您的图片。抱歉，我暂时还无法识别图片内容，请用文字描述您的问题。",
    "video": "已收到您的视频。抱歉，我暂时还无法查看视频，请用文字描述您的问题。",
    "shortvideo": "已收到您的视频。抱歉，我暂时还无法查看视频，请用文字描述您的问题。",
    "location": "已收到您的位置。请用文字告诉我需要什么帮助。",
    "link": "已收到您分享的链接。请用文字告诉我需要什么帮助。",
    "file": "已收到您的文件。抱歉，我暂时还无法读取文件，请用文字描述您的问题。",
}
UNSUPPORTED_DEFAULT = "抱歉，我暂时只能处理文字消息，请用文字描述您的问题。"


class HandOff(StrEnum):
    """What a channel can do, for one account, when a customer asks for a person."""

    PERSON = "person"  # pass the conversation to a person (kf servicers, an official account's staff, a phone agent)
    NOBODY = "nobody"  # no person can take it here: say so honestly instead of an empty promise


class Action(StrEnum):
    ANSWER = "answer"  # send ``Decision.text`` now; no model
    HAND_OFF = "hand_off"  # send ``Decision.text`` (the notice), then the channel hands the conversation to a person
    GENERATE = "generate"  # the model answers (a voice message: after a worker has transcribed it)


@dataclass(frozen=True, slots=True)
class Message:
    """What the customer sent, as far as the decision is concerned."""

    text: str  # printable, stripped; "" for a non-text message or a voice not yet transcribed
    kind: str = "text"  # the platform's message type: text, voice, image…
    has_media: bool = False  # a voice message whose audio a worker can download and transcribe


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    why: str  # the rule that decided, for logs and the audit trail: "faq", "asks_for_person"…
    text: str = ""
    source: ReplySource | None = None  # the stored reply's source, for ANSWER and HAND_OFF

    def answer(self) -> Answer:
        """The reply to store for a decision that answers now (ANSWER or HAND_OFF)."""
        if self.source is None:
            raise ValueError(f"a {self.action} decision has no answer")
        return Answer(self.text, self.source, why=self.why)


Rule = Callable[[Settings, Message, HandOff], Decision | None]


def unsupported_answer(kind: str) -> str:
    return UNSUPPORTED.get(kind, UNSUPPORTED_DEFAULT)


def faq_answer(settings: Settings, text: str) -> str | None:
    """The answer of the FAQ entry that matches the text confidently (models.knowledge.faq_cache), or None:
    a keyword rule whose keywords all occur, else the best question or similar question at or above
    ``settings.faq_threshold``. Below it the FAQ abstains; it never guesses."""
    found = faq_cache.lookup(settings, text).answer
    return found.entry.answer if found is not None else None


NEGATIONS = ("不用", "不要", "不需要", "无需", "不必", "没必要")
_CLAUSE_BREAK = re.compile(r"[，,。.!！?？;；、\s]")


def _declined(before: str) -> bool:
    """True when the words right before a hand-off keyword, in the same clause, decline it ("不用转人工了",
    "别转人工"); "特别想找人工" or "别的都不要，转人工" still ask for a person."""
    clause = _CLAUSE_BREAK.split(before)[-1]
    return clause.endswith("别") or any(negation in clause for negation in NEGATIONS)


def wants_human(settings: Settings, text: str) -> bool:
    """True when the customer asks for a person (one of ``handoff_keywords``, or just "人工")."""
    folded = text.casefold().strip(" 。.!！?？")
    if folded == "人工":
        return True
    for keyword in settings.handoff_keywords:
        at = folded.find(keyword.casefold())
        while at >= 0:
            if not _declined(folded[max(0, at - 4):at]):
                return True
            at = folded.find(keyword.casefold(), at + 1)
    return False


# ---- the rules, in order --------------------------------------------------------------------------


def nothing_to_read(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    """A message without text: a voice goes to a worker to be transcribed; anything else gets a polite answer."""
    if message.text:
        return None
    if message.kind == "voice" and message.has_media:
        return Decision(Action.GENERATE, "voice_to_transcribe")
    return Decision(Action.ANSWER, "unsupported_kind", unsupported_answer(message.kind), ReplySource.RULE)


def moderated(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    """The operator's moderation (models.moderation): refuse politely, or hand off where a person can take over
    (refuse where none can). ``why`` is ``moderated:<action>:<rule id>``, audited as ``moderated``; ``mask``
    words are starred when the message is stored (models.privacy.stored_text), and the model answers."""
    if not message.text:
        return None
    finding = moderation.check(settings, message.text, moderation.Direction.INBOUND).finding
    if finding is None or finding.verdict is moderation.Verdict.MASK:
        return None
    if finding.verdict is moderation.Verdict.HAND_OFF and handoff is HandOff.PERSON:
        return Decision(Action.HAND_OFF, f"{MODERATED}hand_off:{finding.rule}", settings.handoff_reply,
                        ReplySource.HANDOFF)
    return Decision(Action.ANSWER, f"{MODERATED}refuse:{finding.rule}", settings.moderation_refuse_reply,
                    ReplySource.RULE)


def asks_for_person(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    if not wants_human(settings, message.text):
        return None
    if handoff is HandOff.PERSON:
        return Decision(Action.HAND_OFF, "asks_for_person", settings.handoff_reply, ReplySource.HANDOFF)
    return Decision(Action.ANSWER, "asks_for_person_none_available", settings.handoff_unavailable_reply,
                    ReplySource.RULE)


def faq(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    answer = faq_answer(settings, message.text)
    return Decision(Action.ANSWER, "faq", answer, ReplySource.FAQ) if answer is not None else None


RULES: tuple[Rule, ...] = (nothing_to_read, moderated, asks_for_person, faq)
MODEL_ANSWERS = Decision(Action.GENERATE, "no_rule")


def decide(settings: Settings, message: Message, handoff: HandOff, rules: Sequence[Rule] = RULES) -> Decision:
    """What happens to the customer's message: the first rule that decides, else the model answers."""
    for rule in rules:
        decision = rule(settings, message, handoff)
        if decision is not None:
            return decision
    return MODEL_ANSWERS


# ---- what follows the channel's hand-off ability ---------------------------------------------------


def fallback_reply(settings: Settings, handoff: HandOff) -> str:
    """What the customer gets when the model cannot answer; the 转人工 hint only where a person can take over."""
    if handoff is HandOff.PERSON and settings.fallback_handoff_hint:
        return settings.fallback_reply + settings.fallback_handoff_hint
    return settings.fallback_reply


def prompt_hint(settings: Settings, handoff: HandOff) -> str | None:
    """A second system block telling the model that a person can take over, or None.

    Kept apart from the system prompt so that every channel shares the same first system block (the
    batched engine computes its KV once for all conversations).
    """
    if handoff is HandOff.PERSON and settings.prompt_handoff_hint:
        return settings.prompt_handoff_hint
    return None

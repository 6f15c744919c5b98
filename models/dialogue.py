"""The one dialogue decision: what happens to a customer's message before any model sees it.

:func:`decide` is pure. Every channel calls it with the customer's message and what the channel
can do about a request for a person (:class:`HandOff`); it returns a :class:`Decision` — answer
now with a fixed text, hand the conversation to a person, or let the model answer — and says
why. Channels only carry the decision out (through their hand-off port, their ingress calls);
they never look at the customer's words themselves.

The decision runs its :data:`RULES` in order, the first that speaks wins. Moderation is the first
rule after an empty message (:func:`moderated`; it is the one rule that may do I/O: reading the
operator's keyword file when it changed, calling a moderation endpoint when one is configured).
Knowledge-base answers and intents plug in here as further rules, so that every channel gets them at once: an
intent with a route in ``KEFU_INTENT_ROUTES`` (models.intents; "complaints go to a person") is decided after the
hand-off rules and before the FAQ, ``why`` ``intent_route:<label>``.

Hand-off: a request for a person in the customer's own words (:mod:`models.handoff_detect`) is handed off, or
answered honestly where nobody can take it; a message that may be one is asked back (``handoff_ask_back_reply``)
and a yes right after it hands off. So do ``handoff_after_failures`` fallback replies in a row and clearly negative
wording. What follows from the conversation so far (:attr:`Message.asked_back`, :attr:`Message.failed_answers`)
is filled in by the worker (workers/follow_up.py); every channel may turn detection off or add words
(``KEFU_HANDOFF_CHANNELS``). So is :attr:`Message.csat_asked`: a message that is just a number 1-5 right after the
request for a satisfaction score (models.csat) is decided ``csat_score`` — thanked, the score stored — not
answered by the model.

What the model is told and what a customer hears when the model fails also follow the channel:
:func:`system_prompt` and :func:`fallback_reply` mention 转人工 only where a person can take over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from models import csat, intents, moderation
from models.handoff_detect import Verdict, detect, is_yes, negative_word
from models.knowledge import faq_cache
from models.knowledge.faq import FaqEntry
from models.replies import MODERATED, Answer
from models.settings import HandOffChannel, Settings
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
CSAT_SCORE = "csat_score"  # Decision.why of a satisfaction score answered with the thanks
APPROVED_ANSWER = "approved_answer:"  # Decision.why of an approved answer: "approved_answer:<reply id>"


class HandOff(StrEnum):
    """What a channel can do, for one account, when a customer asks for a person."""

    PERSON = "person"  # pass the conversation to a person (kf servicers, an official account's staff, a phone agent)
    NOBODY = "nobody"  # no person can take it here: say so honestly instead of an empty promise
    AFTER_HOURS = "after_hours"  # people take conversations here, but not now (KEFU_DESK_HOURS): say so


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
    # What the conversation says so far, where the caller knows it (the worker reads it from the stored replies,
    # workers/follow_up.py; a gateway callback does not, and leaves the defaults):
    channel: str = ""  # the channel's name, for its own hand-off settings (KEFU_HANDOFF_CHANNELS)
    asked_back: bool = False  # the last reply asked whether the customer wants a person (handoff_ask_back_reply)
    failed_answers: int = 0  # fallback replies in a row just before this message
    csat_asked: bool = False  # the last reply asked for a satisfaction score (models.csat.ask)
    # a worker decides the next message again knowing this one (a yes to an ask-back hands off); False where only
    # the channel's own loop can hand over (the phone): no ask-back there, it could not be carried out
    follows_up: bool = True


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
    found = faq_cache.lookup(settings, text)
    return found.entry.answer if found is not None else None


NO_CHANNEL_SETTINGS = HandOffChannel()


def channel_handoff(settings: Settings, channel: str) -> HandOffChannel:
    """The channel's own hand-off settings (``KEFU_HANDOFF_CHANNELS``), or the defaults."""
    return settings.handoff_channels.get(channel, NO_CHANNEL_SETTINGS)


def person_request(settings: Settings, message: Message) -> Verdict:
    """Whether the message asks for a person (models.handoff_detect, with the operator's and the channel's extra
    words); NOT where the channel turned detection off."""
    own = channel_handoff(settings, message.channel)
    if not own.detect or not message.text:
        return Verdict.NOT
    return detect(message.text, (*settings.handoff_keywords, *own.phrases)).verdict


def _to_person(settings: Settings, handoff: HandOff, why: str, notice: str) -> Decision:
    if handoff is HandOff.PERSON:
        return Decision(Action.HAND_OFF, why, notice, ReplySource.HANDOFF)
    if handoff is HandOff.AFTER_HOURS:
        return Decision(Action.ANSWER, f"{why}_after_hours", settings.desk_after_hours_reply, ReplySource.RULE)
    return Decision(Action.ANSWER, f"{why}_none_available", settings.handoff_unavailable_reply, ReplySource.RULE)


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


def confirms_person(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    """A yes ("是的", "对", "嗯", "需要") right after the ask-back hands off."""
    if not message.asked_back or handoff is not HandOff.PERSON or not channel_handoff(settings, message.channel).detect:
        return None
    return _to_person(settings, handoff, "asks_for_person_confirmed", settings.handoff_reply) if is_yes(
        message.text) else None


def asks_for_person(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    """A request for a person: handed off, or told honestly that nobody can take it here. A message that may be
    one is asked back where a person can take over (once: not again right after the ask-back); elsewhere the
    model answers it."""
    verdict = person_request(settings, message)
    if verdict is Verdict.REQUEST:
        return _to_person(settings, handoff, "asks_for_person", settings.handoff_reply)
    if verdict is Verdict.UNCLEAR and handoff is HandOff.PERSON and message.follows_up and not message.asked_back:
        return Decision(Action.ANSWER, "asks_for_person_unclear", settings.handoff_ask_back_reply, ReplySource.RULE)
    return None


def failures_limit(settings: Settings, channel: str) -> int:
    """Fallback replies in a row after which the next message goes to a person (0: never): the channel's own
    ``after_failures``, else ``handoff_after_failures``."""
    own = channel_handoff(settings, channel).after_failures
    return settings.handoff_after_failures if own is None else own


def after_failures(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    """After :func:`failures_limit` fallback replies in a row, the next message goes to a person; where none
    can take it, an honest answer (which ends the run of failures)."""
    limit = failures_limit(settings, message.channel)
    if not limit or message.failed_answers < limit:
        return None
    if handoff is HandOff.PERSON:
        return Decision(Action.HAND_OFF, "failed_answers", settings.handoff_failures_reply, ReplySource.HANDOFF)
    if handoff is HandOff.AFTER_HOURS:
        return Decision(Action.ANSWER, "failed_answers_after_hours", settings.desk_after_hours_reply, ReplySource.RULE)
    return Decision(Action.ANSWER, "failed_answers_none_available", settings.handoff_failures_unavailable_reply,
                    ReplySource.RULE)


def unhappy(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    """Clearly negative wording ("垃圾", "气死", "投诉"…) goes to a person where one can take it; elsewhere the
    model answers (a fixed apology would leave the customer's question unanswered)."""
    own = channel_handoff(settings, message.channel).on_negative
    if handoff is not HandOff.PERSON or not (settings.handoff_on_negative if own is None else own):
        return None
    word = negative_word(message.text, settings.handoff_negative_words)
    return None if word is None else Decision(Action.HAND_OFF, "negative_sentiment", settings.handoff_negative_reply,
                                              ReplySource.HANDOFF)


INTENT_ROUTE = "intent_route:"  # Decision.why of an intent route: "intent_route:<label>"


def routed(settings: Settings, label: str, handoff: HandOff) -> Decision | None:
    """The operator's route for an intent (``KEFU_INTENT_ROUTES``): a hand-off (or, where nobody can take over,
    the honest answer) or a fixed answer; None for an intent without a route."""
    action = settings.intent_routes.get(label)
    if action is None:
        return None
    why = f"{INTENT_ROUTE}{label}"
    if action == "hand_off":
        return _to_person(settings, handoff, why, settings.handoff_reply)
    return Decision(Action.ANSWER, why, action.removeprefix("answer:"), ReplySource.RULE)


def intent_route(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    """A message whose intent (models.intents, without the model) has a route in ``KEFU_INTENT_ROUTES``."""
    if not settings.intent_routes or not message.text:
        return None
    return routed(settings, intents.classify(settings, message.text).label, handoff)


def faq(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    """A confident FAQ match answers now. An operator-approved model answer (models.knowledge.approved) is matched
    the same way, beside the FAQ entries; its reply says so: source ``approved``, ``why`` ``approved_answer:<the
    approved reply's id>``."""
    found = faq_cache.lookup(settings, message.text)
    return None if found is None else faq_decision(found.entry)


def faq_decision(entry: FaqEntry, why: str = "faq") -> Decision:
    """Answer with an FAQ entry's answer (source ``faq``, ``why``), or an approved answer's (source ``approved``,
    ``why`` ``approved_answer:<reply id>``) however it was matched."""
    approved = entry.approved_reply
    if approved is not None:
        return Decision(Action.ANSWER, f"{APPROVED_ANSWER}{approved}", entry.answer, ReplySource.APPROVED)
    return Decision(Action.ANSWER, why, entry.answer, ReplySource.FAQ)


def csat_score(settings: Settings, message: Message, handoff: HandOff) -> Decision | None:
    """Just a number 1-5 right after the request for a score: thanked (``csat_thanks_reply``); whoever stores the
    answer also stores the score (models.csat.record; workers.answering.carry_out). Anything else goes on."""
    if not message.csat_asked or csat.score_of(message.text) is None:
        return None
    return Decision(Action.ANSWER, CSAT_SCORE, settings.csat_thanks_reply, ReplySource.CSAT)


RULES: tuple[Rule, ...] = (nothing_to_read, moderated, confirms_person, asks_for_person, after_failures, unhappy,
                          intent_route, faq)
# What a worker decides again once it knows the conversation (Message.asked_back, failed_answers): workers/follow_up.py
FOLLOW_UP_RULES: tuple[Rule, ...] = (csat_score, confirms_person, after_failures)
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

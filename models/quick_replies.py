"""Answers that need no model: FAQ hits, welcomes, and what to say about unsupported message types.

Pure functions over Settings. Channels use them to answer at once (on WeChat, passively inside the
5-second callback); anything without a quick reply goes to the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from models.settings import Settings

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


def faq_answer(settings: Settings, text: str) -> str | None:
    """The answer of the first FAQ entry whose keywords all occur in the text (case-insensitive)."""
    folded = text.casefold()
    for entry in settings.faq:
        if entry.keywords and all(k.casefold() in folded for k in entry.keywords):
            return entry.answer
    return None


def unsupported_answer(kind: str) -> str:
    return UNSUPPORTED.get(kind, UNSUPPORTED_DEFAULT)


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


@dataclass(frozen=True, slots=True)
class Rule:
    """An answer that needs no model. ``to_person``: the customer asked for a person and the channel hands off."""

    answer: str
    source: str  # the reply's source: "handoff", "faq" or "rule"
    to_person: bool = False


def rule_for(settings: Settings, text: str, *, hands_off: bool | None) -> Rule | None:
    """The dialogue rules every channel applies to a customer's text, in order; None: the model answers.

    1. Asking for a person (:func:`wants_human`). ``hands_off``: True where the channel can pass the
       customer to a person (``handoff_reply``, then the channel's own hand-off); False where it cannot
       (an honest ``handoff_unavailable_reply``, never an empty promise); None where the caller does not
       decide this (the model answers).
    2. An FAQ entry (:func:`faq_answer`).
    """
    if hands_off is not None and wants_human(settings, text):
        if hands_off:
            return Rule(settings.handoff_reply, "handoff", to_person=True)
        return Rule(settings.handoff_unavailable_reply, "rule")
    faq = faq_answer(settings, text)
    return Rule(faq, "faq") if faq is not None else None

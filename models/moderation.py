"""Content moderation of customers' messages and the model's replies: what to refuse, mask or hand off.

Two checks, both optional, combined by :class:`Moderator`:

- :class:`KeywordList`: the operator's file (``KEFU_MODERATION_FILE``), one rule per line, ``词 action``
  with action ``refuse``, ``mask`` or ``hand_off`` after a space or a tab (``#`` starts a comment; a line
  without one of these actions is a phrase to refuse). Matching is case-insensitive substring matching. The
  file is read again when its modification time or size changes, so an edit takes effect on the next
  message without a restart; a file that cannot be read keeps the last good list (logged without its
  content). A rule's id is ``keyword:<line number>``: audit rows name it, never the word or the text.
- :class:`ModelCheck` (interface) and :class:`HttpModelCheck`: ``POST KEFU_MODERATION_URL`` with
  ``{"text", "direction"}``, answered with ``{"action": "allow"|"refuse"|"hand_off", "rule": "…"}``.
  Every call has a timeout (``KEFU_MODERATION_TIMEOUT_S``); an endpoint that fails or answers nonsense
  gives ``refuse`` (rule ``model_unavailable``) when ``KEFU_MODERATION_FAIL_CLOSED=true``, else nothing.

:func:`moderator` returns the process's moderator for a Settings (None when nothing is configured: no
I/O at all). The strongest finding wins: refuse, then hand_off, then mask. Nothing here raises for
any text or any file content.
"""

from __future__ import annotations

import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import httpx

from models.settings import Settings

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    REFUSE = "refuse"  # answer with KEFU_MODERATION_REFUSE_REPLY (in) / the fallback (out); no model
    HAND_OFF = "hand_off"  # a person takes over where the channel has one, else refuse
    MASK = "mask"  # the words are starred in what is stored and shown to the model; the rest goes on


_STRENGTH = {Verdict.REFUSE: 3, Verdict.HAND_OFF: 2, Verdict.MASK: 1}


class Direction(StrEnum):
    INBOUND = "in"
    OUTBOUND = "out"


@dataclass(frozen=True, slots=True)
class Finding:
    verdict: Verdict
    rule: str  # "keyword:12", "model:<the endpoint's rule>", "model_unavailable"; never the text


@dataclass(frozen=True, slots=True)
class Outcome:
    """What moderation made of a text: the strongest finding (None: clean) and the text with masked words."""

    finding: Finding | None
    text: str
    masked_rules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Keyword:
    word: str
    verdict: Verdict
    rule: str


def parse_keywords(content: str) -> list[_Keyword]:
    """The rules of a keyword file: blank lines and comments are skipped; a line whose last word (after a space
    or a tab) is not an action is a phrase to refuse, whole."""
    rules: list[_Keyword] = []
    for number, line in enumerate(content.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            word, verdict = parts[0], Verdict(parts[1].lower())
        except (IndexError, ValueError):  # one word, or no known action
            word, verdict = line, Verdict.REFUSE
        rules.append(_Keyword(word.casefold(), verdict, f"keyword:{number}"))
    return rules


class KeywordList:
    """The operator's keyword file, read again when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._rules: list[_Keyword] = []
        self._missing = False

    def rules(self) -> list[_Keyword]:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if not self._missing:  # once per disappearance, not once per message
                log.warning("moderation file %s unreadable (%s); keeping %d rules", self.path,
                            type(exc).__name__, len(self._rules))
            self._missing, self._stamp = True, None
            return self._rules
        self._missing = False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with self._lock:
                try:
                    self._rules = parse_keywords(self.path.read_text(encoding="utf-8"))
                    self._stamp = stamp
                    log.info("moderation file %s loaded: %d rules", self.path, len(self._rules))
                except (OSError, UnicodeDecodeError) as exc:
                    log.warning("moderation file %s unreadable (%s); keeping the last rules", self.path,
                                type(exc).__name__)
        return self._rules

    def check(self, text: str) -> Outcome:
        folded = text.casefold()
        strongest: Finding | None = None
        masked: list[str] = []
        out = text
        for rule in self.rules():
            if rule.word not in folded:
                continue
            if rule.verdict is Verdict.MASK:
                out = _star(out, rule.word)
                masked.append(rule.rule)
            if strongest is None or _STRENGTH[rule.verdict] > _STRENGTH[strongest.verdict]:
                strongest = Finding(rule.verdict, rule.rule)
        return Outcome(strongest, out, tuple(masked))


def _star(text: str, word: str) -> str:
    """``text`` with every case-insensitive occurrence of ``word`` replaced by stars of its length."""
    folded, out, at = text.casefold(), [], 0
    found = folded.find(word)
    while found >= 0:
        out.append(text[at:found] + "*" * len(word))
        at = found + len(word)
        found = folded.find(word, at)
    out.append(text[at:])
    return "".join(out)


class ModelCheck(ABC):
    """A moderation model: a finding for the text, or None when it is fine. Must not raise."""

    @abstractmethod
    def check(self, text: str, direction: Direction) -> Finding | None: ...


class HttpModelCheck(ModelCheck):
    """An HTTP moderation endpoint the operator runs (see the module docstring for the protocol)."""

    def __init__(self, url: str, timeout_s: float, fail_closed: bool) -> None:
        self.url, self.timeout_s, self.fail_closed = url, timeout_s, fail_closed

    def check(self, text: str, direction: Direction) -> Finding | None:
        try:
            response = httpx.post(self.url, json={"text": text, "direction": direction.value}, timeout=self.timeout_s)
            response.raise_for_status()
            answer = response.json()
            action = str(answer.get("action", "allow")).lower()
            if action == "allow":
                return None
            verdict = Verdict(action)
            if verdict is Verdict.MASK:  # not in the protocol: there are no words to star
                raise ValueError("mask")
            return Finding(verdict, f"model:{str(answer.get('rule') or action)[:64]}")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("moderation endpoint failed (%s); failing %s", type(exc).__name__,
                        "closed" if self.fail_closed else "open")
            return Finding(Verdict.REFUSE, "model_unavailable") if self.fail_closed else None


class Moderator:
    """The keyword list and the model check together; the strongest finding wins."""

    def __init__(self, keywords: KeywordList | None, model: ModelCheck | None) -> None:
        self.keywords, self.model = keywords, model

    def check(self, text: str, direction: Direction) -> Outcome:
        outcome = self.keywords.check(text) if self.keywords is not None else Outcome(None, text)
        if not text or self.model is None or _is(outcome.finding, Verdict.REFUSE):
            return outcome
        found = self.model.check(text, direction)
        if found is not None and (outcome.finding is None or
                                  _STRENGTH[found.verdict] > _STRENGTH[outcome.finding.verdict]):
            return Outcome(found, outcome.text, outcome.masked_rules)
        return outcome


def _is(finding: Finding | None, verdict: Verdict) -> bool:
    return finding is not None and finding.verdict is verdict


_moderators: dict[tuple[Path | None, str | None, float, bool], Moderator] = {}
_moderators_lock = threading.Lock()


def moderator(settings: Settings) -> Moderator | None:
    """This process's moderator for the settings' file and endpoint; None when neither is configured."""
    if settings.moderation_file is None and not settings.moderation_url:
        return None
    key = (settings.moderation_file, settings.moderation_url, settings.moderation_timeout_s,
           settings.moderation_fail_closed)
    with _moderators_lock:
        found = _moderators.get(key)
        if found is None:
            keywords = KeywordList(settings.moderation_file) if settings.moderation_file is not None else None
            model = (HttpModelCheck(settings.moderation_url, settings.moderation_timeout_s,
                                    settings.moderation_fail_closed) if settings.moderation_url else None)
            found = _moderators[key] = Moderator(keywords, model)
    return found


def check(settings: Settings, text: str, direction: Direction) -> Outcome:
    """Moderate ``text`` with the settings' moderator; a clean outcome when none is configured."""
    found = moderator(settings)
    return found.check(text, direction) if found is not None else Outcome(None, text)

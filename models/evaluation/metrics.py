"""The figures of an evaluation, computed from decisions and labels: pure, no I/O, nothing raised for any input.

FAQ (:class:`FaqOutcome` per query: the best entry and its confidence, and the expected entry or None for a
query that should abstain):

- ``top1``: of the queries that expect an entry, the share whose best entry is it, whatever its confidence;
- at a threshold (:func:`faq_at`): ``right`` (of the queries that expect an entry, answered with it), ``wrong``
  (of all queries: answered with another entry, or answered at all when it should abstain), ``wrong_negative``
  (the part of ``wrong`` on queries that should abstain), ``abstained`` (of all queries). An answer is given when
  the best entry's confidence reaches the threshold, as :meth:`models.knowledge.faq_index.FaqIndex.lookup` does.

Hand-off (:func:`handoff_score` over labels ``request``/``unclear``/``not`` and the detector's verdicts):

- ``recall``: of the messages labelled ``request``, the share that reach a person: handed off at once (REQUEST)
  or asked back (UNCLEAR: "您是需要转接人工客服吗？", and a yes hands off); ``strict_recall`` counts REQUEST only;
- ``precision``: of the messages handed off at once (REQUEST), the share labelled ``request`` (a message labelled
  ``unclear`` that is handed off at once counts against it);
- ``needless_ask_backs``: messages labelled ``not`` that got UNCLEAR (one more turn, no wrong hand-off).

Intents (:func:`intent_scores` over (expected, given) labels): per label, ``precision`` (of the messages given
the label, the share expected to have it) and ``recall`` (of the messages expected to have it, the share given
it); :func:`confusions`: the most frequent (expected, given) pairs that differ.

A rate with nothing to count over (no request in the set, no hand-off made) is None, never a division by zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

REQUEST, UNCLEAR, NOT = "request", "unclear", "not"
HANDOFF_LABELS = (REQUEST, UNCLEAR, NOT)


def pct(values: Sequence[float], p: float) -> float:
    """The nearest-rank p-th percentile of durations in seconds, in milliseconds (NaN when empty)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))] * 1000


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True, slots=True)
class FaqOutcome:
    best: str | None  # the best entry's id; None when no entry shares a word with the query
    confidence: float
    expected: str | None  # the entry that should answer; None: the query should abstain


@dataclass(frozen=True, slots=True)
class FaqAt:
    threshold: float
    queries: int
    positives: int  # queries that expect an entry
    right: int
    wrong: int
    wrong_negative: int
    abstained: int

    @property
    def right_rate(self) -> float | None:
        return rate(self.right, self.positives)

    @property
    def wrong_rate(self) -> float | None:
        return rate(self.wrong, self.queries)

    @property
    def wrong_negative_rate(self) -> float | None:
        return rate(self.wrong_negative, self.queries)

    @property
    def abstained_rate(self) -> float | None:
        return rate(self.abstained, self.queries)


def top1(outcomes: Iterable[FaqOutcome]) -> float | None:
    positives = [o for o in outcomes if o.expected is not None]
    return rate(sum(o.best == o.expected for o in positives), len(positives))


def faq_at(outcomes: Sequence[FaqOutcome], threshold: float) -> FaqAt:
    right = wrong = wrong_negative = abstained = 0
    for o in outcomes:
        if o.best is None or o.confidence < threshold:
            abstained += 1
        elif o.best == o.expected:
            right += 1
        else:
            wrong += 1
            wrong_negative += o.expected is None
    positives = sum(o.expected is not None for o in outcomes)
    return FaqAt(threshold, len(outcomes), positives, right, wrong, wrong_negative, abstained)


@dataclass(frozen=True, slots=True)
class HandoffScore:
    messages: int
    requests: int  # labelled request
    reached: int  # of those: REQUEST or UNCLEAR
    at_once: int  # of those: REQUEST
    handed_off: int  # REQUEST verdicts
    handed_off_right: int  # of those: labelled request
    needless_ask_backs: int  # labelled not, verdict UNCLEAR

    @property
    def recall(self) -> float | None:
        return rate(self.reached, self.requests)

    @property
    def strict_recall(self) -> float | None:
        return rate(self.at_once, self.requests)

    @property
    def precision(self) -> float | None:
        return rate(self.handed_off_right, self.handed_off)


def handoff_score(pairs: Iterable[tuple[str, str]]) -> HandoffScore:
    """``pairs``: (label, verdict), both one of ``request``, ``unclear``, ``not``."""
    messages = requests = reached = at_once = handed_off = handed_off_right = needless = 0
    for label, verdict in pairs:
        messages += 1
        if label == REQUEST:
            requests += 1
            reached += verdict != NOT
            at_once += verdict == REQUEST
        if verdict == REQUEST:
            handed_off += 1
            handed_off_right += label == REQUEST
        needless += label == NOT and verdict == UNCLEAR
    return HandoffScore(messages, requests, reached, at_once, handed_off, handed_off_right, needless)


def handoff_error(label: str, verdict: str) -> bool:
    """A request that reaches nobody, or a hand-off at once of a message not labelled request."""
    return (label == REQUEST and verdict == NOT) or (verdict == REQUEST and label != REQUEST)


@dataclass(frozen=True, slots=True)
class LabelScore:
    label: str
    expected: int  # messages labelled with it
    given: int  # messages classified as it
    right: int  # both

    @property
    def precision(self) -> float | None:
        return rate(self.right, self.given)

    @property
    def recall(self) -> float | None:
        return rate(self.right, self.expected)


def intent_scores(pairs: Iterable[tuple[str, str]]) -> tuple[LabelScore, ...]:
    """``pairs``: (expected, given) labels; one score per label seen on either side, by name."""
    expected: Counter[str] = Counter()
    given: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for want, got in pairs:
        expected[want] += 1
        given[got] += 1
        right[want] += want == got
    return tuple(LabelScore(label, expected[label], given[label], right[label])
                 for label in sorted(expected.keys() | given.keys()))


def confusions(pairs: Iterable[tuple[str, str]], top: int = 6) -> list[tuple[str, str, int]]:
    """The ``top`` most frequent (expected, given, count) with expected != given."""
    counted = Counter((want, got) for want, got in pairs if want != got)
    return [(want, got, n) for (want, got), n in counted.most_common(top)]

"""The in-memory FAQ index: BM25 over every phrasing of every entry, a confidence, and abstention.

:class:`FaqIndex` is built once from a sequence of :class:`~models.knowledge.faq.FaqEntry` and then only read,
so one index is shared by every thread. Each entry's question and each of
its similar questions (相似问) is one BM25 document (:class:`~models.knowledge.bm25.Bm25` over
:func:`~models.knowledge.tokens.tokens`); an entry scores as its best phrasing.

:meth:`FaqIndex.search` ranks entries; each :class:`Match` carries a ``confidence`` in [0, 1]: the IDF-weighted
overlap (cosine of the two token sets) of the customer's text and the matched phrasing, less the overlap of the
best *other* entry (``MARGIN_WEIGHT``: two entries that fit equally well are a guess, not an answer; on the ATEC
evaluation the margin quadrupled the answers given at a 3 % wrong-answer rate). An identical question scores 1 when
no other entry shares its tokens. Tokens the FAQ never uses weigh as much as its rarest token, so an off-topic
question scores low. :meth:`FaqIndex.lookup` answers only at or above the threshold and otherwise abstains (None):
the model answers then, grounded by :mod:`workers.grounding`'s own retrieval. Entries written as keyword rules
(``keywords``) answer when every keyword occurs in the text, with confidence 1 (the old ``KEFU_FAQ`` behaviour).

Raises nothing for any text; building raises ``ValueError`` for an entry with neither a question nor keywords.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.knowledge.bm25 import Bm25, idf
from models.knowledge.faq import FaqEntry
from models.knowledge.tokens import tokens
from models.settings import Settings

# KEFU_FAQ_THRESHOLD's default (0.3), chosen on tests/data/faq/atec_faq_tune.json: wrong answers <= 3 % there and on
# the held-out sets; one number, so the bench and the tests check what the service runs with
DEFAULT_THRESHOLD: float = Settings.model_fields["faq_threshold"].default
MARGIN_WEIGHT = 1.0
POOL = 30  # phrasings re-scored per question (BM25's best), enough to see the runner-up entry
# Longer texts are not matched (keyword rules still are): no FAQ question is that long, the confidence of one
# cannot reach a useful threshold (the text's own weight divides it), and segmenting it would cost ~40 ms
MAX_QUERY_CHARS = 300


@dataclass(frozen=True, slots=True)
class Match:
    entry: FaqEntry
    confidence: float  # 0..1; 1 for an identical phrasing or a keyword rule
    phrasing: str  # the question or similar question that matched ("" for a keyword rule)


class FaqIndex:
    def __init__(self, entries: Sequence[FaqEntry]) -> None:
        self.entries = tuple(entries)
        self._keyword_rules = [e for e in self.entries if e.keywords]
        self._owner, self._phrasings = _phrasings(self.entries)  # phrasing -> index of its entry; the phrasings
        self._tokens = [frozenset(tokens(text)) for text in self._phrasings]
        self._bm25 = Bm25([list(toks) for toks in self._tokens])
        self._idf = self._bm25.idf
        self._unseen_idf = idf(len(self._tokens), 0)
        self._norms = [math.sqrt(sum(self._idf[t] for t in toks)) for toks in self._tokens]

    def search(self, text: str, k: int = 5) -> tuple[Match, ...]:
        """The ``k`` best entries for ``text``, best first, each with its confidence; () for a text longer than
        ``MAX_QUERY_CHARS``."""
        if not self._phrasings or len(text) > MAX_QUERY_CHARS:
            return ()
        query = tokens(text)
        if not query:
            return ()
        scores = self._bm25.scores(query)
        pool = [int(i) for i in np.argsort(-scores)[:POOL] if scores[i] > 0]
        return self._ranked(frozenset(query), pool, k)

    def _ranked(self, query: frozenset[str], pool: list[int], k: int) -> tuple[Match, ...]:
        weight = sum(self._idf.get(t, self._unseen_idf) for t in query)
        best: dict[int, tuple[float, int]] = {}  # entry -> (overlap, phrasing), in pool order
        for doc in pool:
            shared = sum(self._idf[t] for t in query & self._tokens[doc])
            overlap = shared / math.sqrt(weight * self._norms[doc] ** 2) if weight and self._norms[doc] else 0.0
            owner = self._owner[doc]
            if owner not in best or overlap > best[owner][0]:
                best[owner] = (overlap, doc)
        by_overlap = sorted(best.items(), key=lambda item: -item[1][0])
        top = by_overlap[0][1][0] if by_overlap else 0.0
        runner_up = by_overlap[1][1][0] if len(by_overlap) > 1 else 0.0
        matches = []
        for owner, (overlap, doc) in by_overlap[:k]:
            rival = runner_up if owner == by_overlap[0][0] else top
            confidence = max(0.0, min(1.0, overlap - MARGIN_WEIGHT * min(rival, overlap)))
            matches.append(Match(self.entries[owner], round(confidence, 4), self._phrasings[doc]))
        return tuple(matches)

    def keyword_rule(self, text: str) -> Match | None:
        folded = text.casefold()
        for entry in self._keyword_rules:
            if all(k.casefold() in folded for k in entry.keywords):
                return Match(entry, 1.0, "")
        return None

    def lookup(self, text: str, threshold: float = DEFAULT_THRESHOLD) -> Match | None:
        """The answer: a keyword rule that matches, else the best entry when its confidence reaches ``threshold``;
        None (abstain) otherwise."""
        rule = self.keyword_rule(text)
        if rule is not None:
            return rule
        best = max(self.search(text), key=lambda c: c.confidence, default=None)
        return best if best is not None and best.confidence >= threshold else None


def _phrasings(entries: Sequence[FaqEntry]) -> tuple[list[int], list[str]]:
    owner: list[int] = []
    phrasings: list[str] = []
    for at, entry in enumerate(entries):
        if not entry.questions and not entry.keywords:
            raise ValueError(f"FAQ entry {entry.id!r} has neither a question nor keywords")
        owner += [at] * len(entry.questions)
        phrasings += entry.questions
    return owner, phrasings

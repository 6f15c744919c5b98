"""An in-memory lexical index of knowledge-base passages: BM25 over Chinese-aware terms. Pure, no I/O.

Terms are character bigrams and single characters of CJK runs (Chinese needs no word segmenter for
this) and whole lower-cased words of Latin letters and digits (English function words dropped), after
NFKC folding (full-width forms become half-width). :meth:`PassageIndex.search` returns the best
passages whose *coverage* — the share of the query's IDF weight that occurs in the passage (a term the
index never saw weighs as a term of one passage) — reaches ``min_coverage``, that share a word or a
two-character term with the query (a single shared character is chance), and whose score is at least
``MIN_RELATIVE`` of the best one's, so a question the knowledge base says nothing about gets no
passages rather than the least bad ones.

Built once per knowledge-base revision and then only read: searching is safe from several threads.
Cost: bm25s's sparse scoring of the query's terms (:mod:`models.knowledge.bm25`, which the FAQ index scores with
too) and one pass over the passages holding each query term for the coverage.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from models.knowledge.bm25 import Bm25, idf

# English function words: without them "Do you ship to Hong Kong?" finds a passage about a password by "do you"
STOPWORDS = frozenset("""a an the and or but if of to in on at by for from with about as into is are was were be been
am do does did doing have has had i me my we our you your he she it its they them their this that these those what
which who whom when where why how can could will would shall should may might must not no so than too very just
there here all any some""".split())
_RUNS = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[a-z0-9]+")
MIN_COVERAGE = 0.12  # kept low: on same-domain questions a higher floor drops hits as fast as misses (docs/BENCHMARKS.md)
MIN_RELATIVE = 0.3  # and at least this share of the best passage's score


def terms(text: str) -> list[str]:
    """The index terms of a text, in order (repeats kept: they are term frequencies)."""
    out: list[str] = []
    for run in _RUNS.findall(unicodedata.normalize("NFKC", text).casefold()):
        if run.isascii():
            if run not in STOPWORDS:
                out.append(run)
            continue
        out += run
        out += (run[i:i + 2] for i in range(len(run) - 1))
    return out


class PassageIndex:
    """BM25 (k1, b) over :func:`terms` of each text (:class:`~models.knowledge.bm25.Bm25`); positions are indices
    into the texts given."""

    def __init__(self, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75,
                 min_coverage: float = MIN_COVERAGE) -> None:
        self.size, self._min_coverage = len(texts), min_coverage
        self._bm25 = Bm25([terms(text) for text in texts], k1=k1, b=b)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        query_terms = set(terms(query))
        unseen = idf(self.size, 1)  # as if in one passage
        total = sum(self._bm25.idf.get(t, unseen) for t in query_terms)
        scores = self._bm25.scores(query_terms)
        covered = np.zeros(self.size)
        strong = np.zeros(self.size, dtype=bool)
        for term in query_terms & self._bm25.idf.keys():
            positions = self._bm25.positions(term)
            covered[positions] += self._bm25.idf[term]
            if len(term) > 1 or term.isascii():
                strong[positions] = True
        best = float(scores.max()) if self.size else 0.0
        passing = np.flatnonzero(strong & (covered >= self._min_coverage * total) & (scores >= MIN_RELATIVE * best)
                                 & (scores > 0))
        if len(passing) > k:  # the k best without sorting them all
            passing = passing[np.argpartition(-scores[passing], k - 1)[:k]] if k > 0 else passing[:0]
        ranked = sorted(passing.tolist(), key=lambda pos: (-scores[pos], pos))
        return [(pos, float(scores[pos])) for pos in ranked]

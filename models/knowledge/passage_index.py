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
Cost: one dictionary lookup per query term and one vectorized addition over its postings (numpy).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

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


class Retriever(Protocol):
    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best (position, score) pairs, best first."""
        ...


class PassageIndex:
    """BM25 (k1, b) over :func:`terms` of each text; positions are indices into the texts given."""

    def __init__(self, texts: Sequence[str], *, k1: float = 1.2, b: float = 0.75,
                 min_coverage: float = MIN_COVERAGE) -> None:
        self.size, self._min_coverage = len(texts), min_coverage
        postings: defaultdict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        lengths = np.zeros(self.size, dtype=np.float64)
        for position, text in enumerate(texts):
            counts = Counter(terms(text))
            lengths[position] = sum(counts.values())
            for term, count in counts.items():
                at, tf = postings[term]
                at.append(position)
                tf.append(count)
        norms = k1 * (1 - b + b * lengths / max(float(lengths.mean()) if self.size else 1.0, 1e-9))
        self._idf: dict[str, float] = {}
        # each posting's BM25 weight precomputed: a search only adds arrays up
        self._postings: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]] = {}
        for term, (at, tf) in postings.items():
            positions, freqs = np.asarray(at, dtype=np.int32), np.asarray(tf, dtype=np.float64)
            idf = math.log(1 + (self.size - len(at) + 0.5) / (len(at) + 0.5))
            self._idf[term] = idf
            self._postings[term] = (positions, idf * freqs * (k1 + 1) / (freqs + norms[positions]))

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        query_terms = set(terms(query))
        unseen = math.log(1 + (self.size - 0.5) / 1.5)  # as if in one passage
        total = sum(self._idf.get(t, unseen) for t in query_terms)
        scores = np.zeros(self.size)
        covered = np.zeros(self.size)
        strong = np.zeros(self.size, dtype=bool)
        for term in query_terms & self._postings.keys():
            positions, weights = self._postings[term]
            scores[positions] += weights  # a term occurs once per passage in its postings: no repeated index
            covered[positions] += self._idf[term]
            if len(term) > 1 or term.isascii():
                strong[positions] = True
        best = float(scores.max()) if self.size else 0.0
        passing = np.flatnonzero(strong & (covered >= self._min_coverage * total) & (scores >= MIN_RELATIVE * best)
                                 & (scores > 0))
        if len(passing) > k:  # the k best without sorting them all
            passing = passing[np.argpartition(-scores[passing], k - 1)[:k]] if k > 0 else passing[:0]
        ranked = sorted(passing.tolist(), key=lambda pos: (-scores[pos], pos))
        return [(pos, float(scores[pos])) for pos in ranked]

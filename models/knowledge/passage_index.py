"""An in-memory lexical index of knowledge-base passages: BM25 over Chinese-aware terms. Pure, no I/O.

Terms are character bigrams and single characters of CJK runs (Chinese needs no word segmenter for
this) and whole lower-cased words of Latin letters and digits, after NFKC folding (full-width forms
become half-width). :meth:`PassageIndex.search` returns the best passages whose *coverage* — the
share of the query's IDF weight that occurs in the passage (a term the index never saw weighs as a
term of one passage) — reaches ``min_coverage``, that share a word or a two-character term with
the query (a single shared character is chance), and whose score is at least ``MIN_RELATIVE`` of the
best one's, so a question the knowledge base says nothing about gets no passages rather than the
least bad ones.

Built once per knowledge-base revision and then only read: searching is safe from several threads.
Cost: one dictionary lookup per query term and one addition per posting of those terms.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Protocol

_RUNS = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+|[a-z0-9]+")
MIN_COVERAGE = 0.12  # hand-set on a few questions, not tuned on data (docs/knowledge.md)
MIN_RELATIVE = 0.3  # and at least this share of the best passage's score


def terms(text: str) -> list[str]:
    """The index terms of a text, in order (repeats kept: they are term frequencies)."""
    out: list[str] = []
    for run in _RUNS.findall(unicodedata.normalize("NFKC", text).casefold()):
        if run.isascii():
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
        postings: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        lengths = []
        for position, text in enumerate(texts):
            counts = Counter(terms(text))
            lengths.append(sum(counts.values()))
            for term, count in counts.items():
                postings[term].append((position, count))
        average = (sum(lengths) / len(lengths)) if lengths else 1.0
        norms = [k1 * (1 - b + b * length / max(average, 1e-9)) for length in lengths]
        self._idf = {t: math.log(1 + (self.size - len(p) + 0.5) / (len(p) + 0.5)) for t, p in postings.items()}
        # each posting's BM25 weight precomputed: a search only adds them up
        self._weights = {t: [(pos, self._idf[t] * tf * (k1 + 1) / (tf + norms[pos])) for pos, tf in p]
                         for t, p in postings.items()}

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        query_terms = set(terms(query))
        unseen = math.log(1 + (self.size - 0.5) / 1.5)  # as if in one passage
        total = sum(self._idf.get(t, unseen) for t in query_terms)
        scores: defaultdict[int, float] = defaultdict(float)
        covered: defaultdict[int, float] = defaultdict(float)
        strong: set[int] = set()
        for term in query_terms:
            idf = self._idf.get(term)
            if idf is None:
                continue
            for position, weight in self._weights[term]:
                scores[position] += weight
                covered[position] += idf
            if len(term) > 1 or term.isascii():
                strong.update(position for position, _ in self._weights[term])
        best = max(scores.values(), default=0.0)
        passing = [(pos, score) for pos, score in scores.items() if pos in strong
                   and covered[pos] >= self._min_coverage * total and score >= MIN_RELATIVE * best]
        passing.sort(key=lambda hit: (-hit[1], hit[0]))
        return passing[:k]

"""BM25 over texts already cut into terms: the one lexical scorer of the knowledge base. Pure, no I/O.

The FAQ index (:mod:`models.knowledge.faq_index`, jieba words and characters) and the passage index
(:mod:`models.knowledge.passage_index`, character bigrams) each tokenise their own way and score with
:class:`Bm25`. Each posting's weight is computed once when the index is built, so scoring a query is one
dictionary lookup per distinct query term and one ``numpy.bincount`` over their postings. Built once, then only read:
safe from several threads.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

Postings = tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]  # positions holding a term, their BM25 weights


def idf(size: int, df: int) -> float:
    """BM25's (Lucene's, never negative) inverse document frequency of a term in ``df`` of ``size`` texts."""
    return math.log(1 + (size - df + 0.5) / (df + 0.5))


class Bm25:
    """BM25 (k1, b) over ``documents`` (each a sequence of terms; repeats are term frequencies); positions are
    indices into ``documents``."""

    def __init__(self, documents: Sequence[Sequence[str]], *, k1: float = 1.2, b: float = 0.75) -> None:
        self.size = len(documents)
        gathered: defaultdict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        lengths = np.zeros(self.size, dtype=np.float64)
        for position, document in enumerate(documents):
            counts = Counter(document)
            lengths[position] = sum(counts.values())
            for term, count in counts.items():
                at, tf = gathered[term]
                at.append(position)
                tf.append(count)
        norms = k1 * (1 - b + b * lengths / max(float(lengths.mean()) if self.size else 1.0, 1e-9))
        self.idf: dict[str, float] = {}
        self.postings: dict[str, Postings] = {}
        for term, (at, tf) in gathered.items():
            positions, freqs = np.asarray(at, dtype=np.int32), np.asarray(tf, dtype=np.float64)
            self.idf[term] = idf(self.size, len(at))
            self.postings[term] = (positions, self.idf[term] * freqs * (k1 + 1) / (freqs + norms[positions]))

    def scores(self, terms: Iterable[str]) -> npt.NDArray[np.float64]:
        """Every document's score for the distinct ``terms`` (0 for a document sharing none)."""
        found = [self.postings[term] for term in set(terms) & self.postings.keys()]
        if not found:
            return np.zeros(self.size)
        summed = np.bincount(np.concatenate([positions for positions, _ in found]),
                             np.concatenate([weights for _, weights in found]), minlength=self.size)
        return summed.astype(np.float64, copy=False)  # float64 already (weighted); numpy's stubs say int

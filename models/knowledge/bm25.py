"""BM25 over texts already cut into terms: the one lexical scorer of the knowledge base. Pure, no I/O.

Scoring is bm25s's (a maintained BM25 library, numpy backend, Lucene's variant: never-negative IDF, no
``k1 + 1`` factor); Kefu only adapts it to what its two indexes need. The FAQ index
(:mod:`models.knowledge.faq_index`, jieba words and characters) and the passage index
(:mod:`models.knowledge.passage_index`, character bigrams) each tokenise their own way and score with
:class:`Bm25`; besides scores they read each term's IDF (the FAQ's confidence, the passages' coverage) and the
positions of the texts holding it (coverage), which :class:`Bm25` exposes from bm25s's own sparse index. Scores are
only compared with each other (a ranking, a share of the best), never with a fixed number, so the scale of the
variant does not matter. Built once, then only read: safe from several threads (bm25s's scoring reads its arrays
and allocates its own result).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import bm25s
import numpy as np
import numpy.typing as npt

# bm25s sets its own logger to DEBUG at import, so every index build would log "Building index from tokens" through
# the process's handlers; its warnings still pass.
logging.getLogger("bm25s").setLevel(logging.WARNING)


def idf(size: int, df: int) -> float:
    """BM25's (Lucene's, never negative) inverse document frequency of a term in ``df`` of ``size`` texts."""
    return math.log(1 + (size - df + 0.5) / (df + 0.5))


class Bm25:
    """BM25 (k1, b) over ``documents`` (each a sequence of terms; repeats are term frequencies); positions are
    indices into ``documents``.

    ``idf``: every indexed term's IDF (:func:`idf`, the same formula bm25s scores with); :meth:`positions`: the
    documents holding a term.
    """

    def __init__(self, documents: Sequence[Sequence[str]], *, k1: float = 1.2, b: float = 0.75) -> None:
        self.size = len(documents)
        self._index = bm25s.BM25(k1=k1, b=b, method="lucene", dtype="float64")
        self._ids: dict[str, int] = {}
        self.idf: dict[str, float] = {}
        if not any(documents):  # bm25s needs one term to build its vocabulary; nothing can match anyway
            return
        self._index.index([list(document) for document in documents], create_empty_token=False, show_progress=False)
        self._ids = dict(self._index.vocab_dict)
        self._indptr: npt.NDArray[np.int64] = np.asarray(self._index.scores["indptr"], dtype=np.int64)
        self._doc_ids: npt.NDArray[np.int32] = np.asarray(self._index.scores["indices"], dtype=np.int32)
        self.idf = {term: idf(self.size, int(self._indptr[at + 1] - self._indptr[at])) for term, at in self._ids.items()}

    def positions(self, term: str) -> npt.NDArray[np.int32]:
        """The documents holding ``term`` (empty for a term no document has)."""
        at = self._ids.get(term)
        if at is None:
            return np.zeros(0, dtype=np.int32)
        return self._doc_ids[self._indptr[at]:self._indptr[at + 1]]

    def scores(self, terms: Iterable[str]) -> npt.NDArray[np.float64]:
        """Every document's score for the distinct ``terms`` (0 for a document sharing none)."""
        ids = sorted({self._ids[term] for term in terms if term in self._ids})
        if not ids:
            return np.zeros(self.size)
        return np.asarray(self._index.get_scores_from_ids(ids), dtype=np.float64)

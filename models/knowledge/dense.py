"""Dense (embedding) retrieval: the :class:`Encoder` interface, an in-memory matrix of vectors, and rank fusion.

The models layer never imports llama_cpp: the worker implements :class:`Encoder` with an embedding GGUF
(:mod:`workers.llm.embedding`, ``KEFU_EMBEDDING_MODEL_PATH``). An encoder returns one L2-normalised float32 row per
text, so a cosine is a dot product. :class:`DenseIndex` holds the rows of a sequence of texts as one numpy matrix
(10,000 passages of a 1,024-dimension model: 40 MB) and ranks them for a query vector with one matrix-vector
product. :meth:`DenseIndex.build` encodes in batches and reuses the row of every text an earlier index already
held, so a knowledge-base change re-encodes only what changed.

:func:`reciprocal_rank_fusion` merges rankings by rank alone (Cormack et al., 2009): BM25 scores are unbounded and
one model's cosines are not another's, so the passages given to the model are fused by rank, which needs no
calibration. The FAQ, which answers by itself, fuses calibrated confidences instead (:mod:`models.knowledge.fused_faq`).

Pure apart from the encoder it is given; built once, then only read: safe from several threads. Raises
``ValueError`` when an encoder returns rows that do not match the texts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

RRF_K = 60  # Cormack et al.'s constant: ranks past a few dozen barely count
BATCH = 4  # texts per encode() call when building (about one 512-token decode): a question waits for one at most

Vectors = npt.NDArray[np.float32]


class Encoder(Protocol):
    """Turns texts into vectors of one model."""

    @property
    def fingerprint(self) -> str:
        """Names the model and how it pools: vectors of equal fingerprints are comparable."""
        ...

    def encode(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised float32 row per text, in order."""
        ...

    def encode_query(self, text: str) -> Vectors:
        """The vector (one row) of a customer's question (with the model's query instruction, if it has one)."""
        ...


def checked(vectors: Vectors, count: int) -> Vectors:
    """``vectors`` as a C-contiguous float32 matrix of ``count`` rows; ValueError otherwise."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != count:
        raise ValueError(f"the encoder returned an array of shape {out.shape} for {count} texts")
    return out


class DenseIndex:
    """The vectors of ``texts`` (row i is ``texts[i]``) under one encoder fingerprint."""

    def __init__(self, texts: Sequence[str], vectors: Vectors, fingerprint: str) -> None:
        self.texts, self.fingerprint = tuple(texts), fingerprint
        self.vectors = checked(vectors, len(self.texts))

    @classmethod
    def build(cls, encoder: Encoder, texts: Sequence[str], previous: DenseIndex | None = None) -> DenseIndex:
        """Encode ``texts`` in batches of ``BATCH``, taking the rows of texts ``previous`` already holds (same
        encoder fingerprint) instead of encoding them again."""
        known: Mapping[str, int] = {}
        if previous is not None and previous.fingerprint == encoder.fingerprint:
            known = {text: row for row, text in enumerate(previous.texts)}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        fresh: dict[str, npt.NDArray[np.float32]] = {}
        for start in range(0, len(missing), BATCH):
            batch = missing[start:start + BATCH]
            fresh.update(zip(batch, checked(encoder.encode(batch), len(batch)), strict=True))
        if not texts:
            return cls((), np.zeros((0, 0), dtype=np.float32), encoder.fingerprint)
        old = previous.vectors if previous is not None else np.zeros((0, 0), dtype=np.float32)
        return cls(texts, np.stack([fresh[t] if t in fresh else old[known[t]] for t in texts]), encoder.fingerprint)

    def __len__(self) -> int:
        return len(self.texts)

    def similarities(self, query: Vectors) -> npt.NDArray[np.float32]:
        """The cosine of every row with the one-row ``query``."""
        if not self.texts:
            return np.zeros(0, dtype=np.float32)
        return self.vectors @ checked(query, 1)[0]

    def search(self, query: Vectors, k: int, floor: float = -1.0) -> list[tuple[int, float]]:
        """The ``k`` rows most similar to ``query`` with a cosine of at least ``floor``, best first."""
        sims = self.similarities(query)
        if k <= 0 or not len(sims):
            return []
        best = np.argpartition(-sims, min(k, len(sims)) - 1)[:k] if len(sims) > k else np.arange(len(sims))
        ranked = sorted((int(i) for i in best if sims[i] >= floor), key=lambda i: (-float(sims[i]), i))
        return [(i, float(sims[i])) for i in ranked]


def reciprocal_rank_fusion(rankings: Iterable[Sequence[int]], k: int = RRF_K) -> list[int]:
    """The items of all rankings, ordered by the sum of 1/(k + rank) over the rankings holding them (rank 1 first;
    ties: the item seen first)."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            score[item] = score.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(score, key=lambda item: -score[item])

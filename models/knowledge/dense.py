"""The dense-retrieval seam: an encoder interface the models layer can use without importing llama_cpp.

A :class:`DenseEncoder` turns texts into L2-normalised vectors (rows of a float32 array). The worker implements
it with llama-cpp-python in embedding mode (:mod:`workers.llm.embedding`, when ``KEFU_EMBEDDING_MODEL_PATH`` names
an embedding GGUF such as Qwen3-Embedding or bge-m3); :class:`~models.knowledge.faq_index.FaqIndex` then fuses the
encoder's ranking with BM25's by :func:`reciprocal_rank_fusion`.

The FAQ confidence (and so answering without the model) stays lexical: a cosine threshold means something only
for one real model, calibrated on real data. TODO(issue 12): calibrate a dense confidence for a real embedding
model and let it answer; until then dense retrieval only orders what :meth:`FaqIndex.search` returns, which
nothing outside bench/faq_eval.py reads (the model's sources come from workers/grounding.py's passage index).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

RRF_K = 60  # the constant of Cormack et al. (2009); ranks past a few dozen barely count


class DenseEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One L2-normalised row per text."""
        ...


def reciprocal_rank_fusion(rankings: Iterable[Sequence[int]], k: int = RRF_K) -> list[int]:
    """Items of all rankings, ordered by the sum of 1/(k + rank) over the rankings that hold them (ties: first seen)."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            score[item] = score.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(score, key=lambda item: -score[item])

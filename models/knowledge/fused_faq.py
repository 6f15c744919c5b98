"""FAQ matching that fuses the lexical confidence with a calibrated dense one: the worker's second look at a
question the gateway's lexical FAQ abstained on.

A cosine means nothing by itself: one model's unrelated texts sit at 0.2, another's at 0.5. So the dense score is
calibrated on the FAQ itself when it is built (:func:`calibrate`), on the phrasings of entries with similar
questions: ``related`` is the median cosine of a phrasing to the nearest *other phrasing of its own entry* (how
close the business's own similar questions 相似问 are), ``unrelated`` the median cosine of a phrasing to the
nearest phrasing of *another* entry. A question's calibrated
similarity to an entry is its best phrasing's cosine placed on that scale (0 at ``unrelated``, 1 at ``related``,
clipped), and its dense confidence is that less the best *other* entry's (as the lexical confidence of
:mod:`models.knowledge.faq_index` does: two entries that fit equally well are a guess). An FAQ without enough
similar questions to calibrate on (fewer than ``MIN_CALIBRATION_ENTRIES`` entries with one), or a model that does
not put paraphrases closer than other entries' questions (``MIN_SPREAD``: a random-weight model) or that finds a
left-out similar question's own entry less often than ``MIN_SELF_TOP1``, gets no dense confidence at all: matching
then is exactly the lexical one.

:func:`fuse` combines the two per entry as independent evidence, ``1 - (1 - lexical)(1 - dense)``: either path
alone can reach the threshold, both together reach it sooner, and when the lexical best and the dense best are
different entries the winner's confidence is reduced by the loser's (they contradict each other).

Pure: numpy only. Built once per FAQ index, then only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.knowledge.dense import DenseIndex, Encoder, Vectors
from models.knowledge.faq import FaqEntry
from models.knowledge.faq_index import FaqIndex, Match

MIN_CALIBRATION_ENTRIES = 3  # entries with a similar question needed to place "related"
MIN_SPREAD = 0.05  # related - unrelated below this: the model does not tell paraphrases from other questions
# A similar question left out must find its own entry (nearest phrasing) at least this often: a model that confuses
# the FAQ's own entries would answer wrongly (a character TF-IDF stand-in finds it 47 % of the time on the BQ set of
# bench/faq_fused_eval.py; forced through, its calibration answered 23.8 % of all questions wrongly at 0.5)
MIN_SELF_TOP1 = 0.8
CALIBRATION_ROWS = 500  # phrasings sampled (evenly) for the calibration, each compared with all: medians of 500 are
# steady, and 10,000 phrasings of 1,024 dimensions then cost 5 GFLOP once per FAQ change, not 20
WHY_FUSED = "faq_fused"  # the reply's rule (reply_stored) when the worker's fused match answered


@dataclass(frozen=True, slots=True)
class Calibration:
    related: float  # median cosine of a phrasing to its own entry's nearest other phrasing
    unrelated: float  # median cosine of a phrasing to the nearest phrasing of another entry
    self_top1: float = 1.0  # how often a phrasing's nearest other phrasing is its own entry's

    def scale(self, cosines: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Cosines on the FAQ's own scale: 0 at ``unrelated`` or below, 1 at ``related`` or above."""
        return np.clip((cosines.astype(np.float64) - self.unrelated) / (self.related - self.unrelated), 0.0, 1.0)


def calibrate(vectors: Vectors, owners: Sequence[int]) -> Calibration | None:
    """The calibration of phrasings (rows of ``vectors``; ``owners[i]`` is row i's entry), or None when the FAQ or the
    model cannot support one."""
    found = anchors(vectors, owners)
    if found is None or found.related - found.unrelated < MIN_SPREAD or found.self_top1 < MIN_SELF_TOP1:
        return None
    return found


def anchors(vectors: Vectors, owners: Sequence[int]) -> Calibration | None:
    """The measures of the calibration, whatever they are; None when the FAQ has fewer than
    ``MIN_CALIBRATION_ENTRIES`` entries with a similar question (so another entry always exists). Measured on the
    phrasings of entries that have a similar question (at most ``CALIBRATION_ROWS`` of them, evenly sampled), each
    compared with every phrasing but itself."""
    owner = np.asarray(owners, dtype=np.int64)
    counts = np.bincount(owner)
    if int((counts > 1).sum()) < MIN_CALIBRATION_ENTRIES:
        return None
    paraphrased = np.flatnonzero(counts[owner] > 1)
    sample = paraphrased[np.unique(np.linspace(0, len(paraphrased) - 1,
                                               min(len(paraphrased), CALIBRATION_ROWS)).astype(int))]
    own_best, other_best = [], []
    for start in range(0, len(sample), 256):  # 256 x phrasings cosines at a time, whatever the FAQ's size
        rows = sample[start:start + 256]
        sims = vectors[rows] @ vectors.T
        sims[np.arange(len(rows)), rows] = -np.inf  # a phrasing is not its own paraphrase
        same = owner[rows][:, None] == owner[None, :]
        own_best.append(np.where(same, sims, -np.inf).max(axis=1))
        other_best.append(np.where(same, -np.inf, sims).max(axis=1))
    own, other = np.concatenate(own_best), np.concatenate(other_best)
    return Calibration(float(np.median(own)), float(np.median(other)), float(np.mean(own > other)))


@dataclass(frozen=True, slots=True)
class DenseMatch:
    entry: FaqEntry
    confidence: float  # calibrated similarity less the best other entry's, 0..1
    phrasing: str


class DenseFaq:
    """The vectors of every phrasing of ``entries`` (in :attr:`FaqEntry.questions` order) and their calibration."""

    def __init__(self, entries: Sequence[FaqEntry], index: DenseIndex, owners: Sequence[int],
                 calibration: Calibration | None) -> None:
        self.entries, self.index, self.calibration = tuple(entries), index, calibration
        self._owners = np.asarray(owners, dtype=np.int64)

    @classmethod
    def build(cls, encoder: Encoder, entries: Sequence[FaqEntry], previous: DenseFaq | None = None) -> DenseFaq:
        """Encode every phrasing (reusing ``previous``'s vectors of unchanged phrasings) and calibrate."""
        owners = [at for at, entry in enumerate(entries) for _ in entry.questions]
        phrasings = [q for entry in entries for q in entry.questions]
        index = DenseIndex.build(encoder, phrasings, previous.index if previous is not None else None)
        return cls(entries, index, owners, calibrate(index.vectors, owners) if phrasings else None)

    def match(self, query: Vectors) -> DenseMatch | None:
        """The entry nearest to ``query`` with its dense confidence; None without a calibration."""
        if self.calibration is None or not len(self.index):
            return None
        scaled = self.calibration.scale(self.index.similarities(query))
        best = np.full(len(self.entries), -1.0)
        np.maximum.at(best, self._owners, scaled)
        order = np.argsort(-best, kind="stable")
        top = int(order[0])
        runner_up = float(best[order[1]]) if len(order) > 1 else 0.0
        rows = np.flatnonzero(self._owners == top)
        phrasing = self.index.texts[int(rows[np.argmax(scaled[rows])])]
        return DenseMatch(self.entries[top], round(max(0.0, float(best[top]) - max(runner_up, 0.0)), 4), phrasing)


@dataclass(frozen=True, slots=True)
class FusedMatch:
    entry: FaqEntry
    confidence: float  # 0..1, compared with KEFU_FAQ_FUSED_THRESHOLD
    lexical: float  # the lexical confidence of this entry (0 when the lexical best was another entry)
    dense: float  # the dense confidence of this entry (0 when the dense best was another entry)

    def audit_detail(self) -> dict[str, object]:
        return {"faq_entry": self.entry.id, "confidence": self.confidence, "lexical": self.lexical,
                "dense": self.dense, "dense_used": True}


def _either(lexical: float, dense: float) -> float:
    return 1.0 - (1.0 - lexical) * (1.0 - dense)


def fuse(lexical: Match | None, dense: DenseMatch | None) -> FusedMatch | None:
    """The fused best entry of the lexical best and the dense best (either may be None), or None when neither
    found one."""
    if dense is None or dense.confidence <= 0:
        return None if lexical is None else FusedMatch(lexical.entry, lexical.confidence, lexical.confidence, 0.0)
    if lexical is None or lexical.confidence <= 0:
        return FusedMatch(dense.entry, dense.confidence, 0.0, dense.confidence)
    if lexical.entry == dense.entry:
        both = _either(lexical.confidence, dense.confidence)
        return FusedMatch(dense.entry, round(both, 4), lexical.confidence, dense.confidence)
    winner, loser = (dense, lexical) if dense.confidence >= lexical.confidence else (lexical, dense)
    confidence = round(winner.confidence - loser.confidence, 4)
    lex, den = (0.0, winner.confidence) if winner is dense else (winner.confidence, 0.0)
    return FusedMatch(winner.entry, confidence, lex, den)


def second_look(index: FaqIndex, dense: DenseFaq, text: str, query: Vectors, threshold: float) -> FusedMatch | None:
    """The worker's answer for ``text`` (``query``: its vector) from an FAQ whose lexical match alone abstained: the
    fused best entry when the dense side took part and the fused confidence reaches ``threshold``, else None."""
    found = fuse(max(index.search(text), key=lambda m: m.confidence, default=None), dense.match(query))
    if found is None or found.dense <= 0:  # the lexical path alone: the gateway's call, already made
        return None
    return found if found.confidence >= threshold else None

"""FAQ matching on real customer paraphrases: top-1, wrong answers and abstention over a threshold curve.

    .venv/bin/python -m bench.faq_eval [--data FILE.json ...] [--latency]

By default on the three sets of tests/data/faq/ (see tests/data/README.md): ATEC ``tune``, on which the default
threshold was chosen, ATEC ``check`` and BQ ``bq_check``, both held out.

For each threshold: ``answered right`` (the expected entry, of the paraphrase queries), ``wrong`` (an answer
that is not the expected one, or any answer to a negative query, of all queries), ``abstained`` (of all
queries). Kefu's FAQ index (models.knowledge.faq_index) against a plain baseline, character 1-2-gram TF-IDF cosine
(numpy), whose confidence is its cosine, and an ablation: that baseline with Kefu's margin confidence.
``top-1`` is the best entry's hit rate with no threshold.
``--latency`` also times models.dialogue.decide() with a 2,000-entry FAQ (the tune set's 200 entries plus
variants of their questions) on every query: p50/p99 per call.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.stats import pct
from models.evaluation.datasets import read_faq_set
from models.evaluation.metrics import FaqOutcome, faq_at, top1
from models.knowledge.faq import FaqEntry
from models.knowledge.faq_index import DEFAULT_THRESHOLD, FaqIndex
from models.knowledge.tokens import normalize

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "faq"
SETS = (DATA / "atec_faq_tune.json", DATA / "atec_faq_check.json", DATA / "bq_faq_check.json")
THRESHOLDS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Ranker = Callable[[str], tuple[str | None, float]]  # query -> (best entry id, confidence)


def load(path: Path) -> tuple[list[FaqEntry], list[tuple[str, str | None]]]:
    entries, cases = read_faq_set(path)  # the reader `kefu eval` uses
    return list(entries), [(case.text, case.expected_faq) for case in cases]


class CharTfidf:
    """The baseline: character unigrams and bigrams, TF-IDF weighted, cosine against every phrasing."""

    def __init__(self, entries: Sequence[FaqEntry]) -> None:
        self.owner = [e.id for e in entries for _ in e.questions]
        docs = [self.grams(q) for e in entries for q in e.questions]
        df = Counter(g for d in docs for g in set(d))
        self.vocab = {g: i for i, g in enumerate(df)}
        self.idf = np.array([math.log((1 + len(docs)) / (1 + df[g])) + 1 for g in df])
        self.matrix = np.stack([self.vector(d) for d in docs])

    @staticmethod
    def grams(text: str) -> list[str]:
        t = normalize(text)
        return list(t) + [t[i:i + 2] for i in range(len(t) - 1)]

    def vector(self, grams: list[str]) -> np.ndarray:
        v = np.zeros(len(self.vocab))
        for g, n in Counter(grams).items():
            if g in self.vocab:
                v[self.vocab[g]] = n * self.idf[self.vocab[g]]
        norm = np.linalg.norm(v)
        return v / norm if norm else v

    def __call__(self, text: str) -> tuple[str | None, float]:
        scores = self.matrix @ self.vector(self.grams(text))
        best = int(np.argmax(scores))
        return (self.owner[best], float(scores[best])) if scores[best] > 0 else (None, 0.0)


class CharTfidfMargin(CharTfidf):
    """The baseline with Kefu's margin: its best entry's cosine less the best other entry's (an ablation)."""

    def __call__(self, text: str) -> tuple[str | None, float]:
        scores = self.matrix @ self.vector(self.grams(text))
        best: dict[str, float] = {}
        for i in np.argsort(-scores)[:30]:
            best.setdefault(self.owner[i], float(scores[i]))
        ranked = sorted(best.items(), key=lambda item: -item[1])
        if not ranked or ranked[0][1] <= 0:
            return None, 0.0
        return ranked[0][0], ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0.0)


def kefu_ranker(index: FaqIndex) -> Ranker:
    def rank(text: str) -> tuple[str | None, float]:
        found = index.search(text, k=2)
        return (found[0].entry.id, found[0].confidence) if found else (None, 0.0)
    return rank


def curve(name: str, rank: Ranker, queries: list[tuple[str, str | None]]) -> None:
    outcomes = [FaqOutcome(*rank(text), expect) for text, expect in queries]
    positives = sum(expect is not None for _, expect in queries)
    print(f"\n{name}: top-1 {top1(outcomes) or 0.0:.1%} of {positives} paraphrases; "
          f"{len(queries) - positives} negative queries")
    print(f"{'threshold':>9} {'answered right':>15} {'wrong':>7} {'wrong (neg.)':>13} {'abstained':>10}")
    for threshold in THRESHOLDS:
        at = faq_at(outcomes, threshold)
        print(f"{threshold:>9.2f} {at.right_rate or 0.0:>15.1%} {at.wrong_rate or 0.0:>7.1%} "
              f"{at.wrong_negative_rate or 0.0:>13.1%} {at.abstained_rate or 0.0:>10.1%}")


def latency(entries: list[FaqEntry], queries: list[tuple[str, str | None]]) -> None:
    """decide() per message with a 2,000-entry FAQ: the real entries plus variants of them (each real question with
    a model number appended), every query's tokens computed afresh (no cache hit), three rounds."""
    from models.dialogue import HandOff, Message, decide
    from models.knowledge import faq_cache
    from models.knowledge.tokens import tokens
    from models.settings import Settings

    filler = [FaqEntry(f"synthetic:{n}", f"{q}（型号 {n}）", "答案", ()) for n, q in
              enumerate(e.question for _ in range(10) for e in entries)]
    big = (entries + filler)[:2000]
    settings = Settings()
    start = time.perf_counter()
    faq_cache.install(big, settings)  # what the knowledge-base poller does: the index is built here, not in decide()
    built = time.perf_counter() - start
    times = []
    for _ in range(3):
        for text, _expect in queries:
            tokens.cache_clear()
            start = time.perf_counter()
            decide(settings, Message(text), HandOff.PERSON)
            times.append(time.perf_counter() - start)
    print(f"\nindex of {len(big)} entries built in {built:.2f} s (jieba already loaded: about 1 s more, once per process)")
    print(f"decide() with that FAQ, {len(times)} calls: p50 {statistics.median(times) * 1e3:.2f} ms, "
          f"p99 {pct(times, 99):.2f} ms, max {max(times) * 1e3:.2f} ms; at 200 messages/s that is "
          f"{200 * statistics.mean(times):.0%} of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append")
    parser.add_argument("--latency", action="store_true")
    args = parser.parse_args()
    for path in args.data or SETS:
        entries, queries = load(path)
        print(f"\n=== {path.name}: {len(entries)} FAQ entries, {sum(len(e.questions) for e in entries)} phrasings; "
              f"default threshold {DEFAULT_THRESHOLD}")
        curve("Kefu FAQ index (BM25 candidates, jieba words + Han characters, margin)", kefu_ranker(FaqIndex(entries)),
              queries)
        curve("baseline: character 1-2-gram TF-IDF cosine", CharTfidf(entries), queries)
        curve("ablation: the baseline with Kefu's margin confidence", CharTfidfMargin(entries), queries)
    if args.latency:
        latency(*load(SETS[0]))


if __name__ == "__main__":
    main()

"""The worker's second look at the FAQ (dense and lexical confidences fused) on real customer paraphrases.

    .venv/bin/python -m bench.faq_fused_eval [--data FILE.json ...] [--embedding-model PATH.gguf] [--force-calibration]

Data: the sets of tests/data/faq/ (source and licence in tests/data/README.md), as bench/faq_eval.py reads them.
For each query, the gateway answers when the lexical FAQ (models.knowledge.faq_index) reaches KEFU_FAQ_THRESHOLD's
default; otherwise the worker's second look (models.knowledge.fused_faq.second_look) may answer at a fused
threshold. Prints, per fused threshold: answered right (of the paraphrase queries) and wrong (of all queries: an
answer that is not the expected entry, or any answer to a question that means none of them) for the gateway
alone and for the gateway plus the worker, and what the worker added.

The encoder is an embedding GGUF when ``--embedding-model`` names one (how an operator sets
KEFU_FAQ_FUSED_THRESHOLD for a model); without, a character 1-2-gram TF-IDF stand-in (bench/faq_eval.py's
baseline as vectors). The stand-in is lexical itself, so what it adds says how the calibration and the fusion
behave on real data, not what a semantic model would add.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.faq_eval import SETS, CharTfidf, load
from models.knowledge.dense import Encoder, Vectors
from models.knowledge.faq import FaqEntry
from models.knowledge.faq_index import DEFAULT_THRESHOLD, FaqIndex
from models.knowledge.fused_faq import MIN_SELF_TOP1, MIN_SPREAD, DenseFaq, anchors, second_look

FUSED = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


class TfidfEncoder:
    """Character 1-2-gram TF-IDF vectors over the FAQ's own vocabulary (a lexical stand-in, not a model)."""

    fingerprint = "char-tfidf"

    def __init__(self, entries: Sequence[FaqEntry]) -> None:
        self._tfidf = CharTfidf(entries)

    def encode(self, texts: Sequence[str]) -> Vectors:
        return np.asarray([self._tfidf.vector(self._tfidf.grams(t)) for t in texts], dtype=np.float32)

    def encode_query(self, text: str) -> Vectors:
        return self.encode([text])


def evaluate(path: Path, encoder: Encoder | None, model: str, force: bool = False) -> None:
    entries, queries = load(path)
    encoder = encoder if encoder is not None else TfidfEncoder(entries)
    index, dense = FaqIndex(entries), DenseFaq.build(encoder, entries)
    positives = sum(expect is not None for _, expect in queries)
    print(f"\n{path.stem}: {len(entries)} entries, {positives} paraphrases, {len(queries) - positives} negatives; "
          f"encoder: {model}")
    if dense.calibration is None:
        owners = [at for at, e in enumerate(entries) for _ in e.questions]
        medians = anchors(dense.index.vectors, owners)
        why = ("too few entries with similar questions" if medians is None else
               f"median cosine to the nearest own similar question {medians.related:.3f}, to another entry's "
               f"{medians.unrelated:.3f} (at least {MIN_SPREAD} apart needed); own entry nearest "
               f"{medians.self_top1:.1%} (at least {MIN_SELF_TOP1:.0%} needed)")
        if not force or medians is None:
            print(f"  no calibration ({why}): the worker adds nothing")
            return
        print(f"  no calibration ({why}); forced through (--force-calibration), what the refusal prevents:")
        dense = DenseFaq(entries, dense.index, owners, medians)
    c = dense.calibration
    assert c is not None  # built calibrated, or forced through above
    print(f"  calibration: related {c.related:.3f}, unrelated {c.unrelated:.3f}, own entry nearest {c.self_top1:.1%}")
    gateway: list[str | None] = []
    worker: list[tuple[str, float] | None] = []
    for text, _ in queries:
        match = index.lookup(text, DEFAULT_THRESHOLD)
        gateway.append(match.entry.id if match is not None else None)
        found = None if match is not None else second_look(index, dense, text, encoder.encode_query(text), 0.0)
        worker.append((found.entry.id, found.confidence) if found is not None else None)

    def rates(answers: list[str | None]) -> tuple[float, float]:
        right = sum(a is not None and a == expect for a, (_, expect) in zip(answers, queries, strict=True))
        wrong = sum(a is not None and a != expect for a, (_, expect) in zip(answers, queries, strict=True))
        return right / max(positives, 1), wrong / len(queries)

    right, wrong = rates(gateway)
    print(f"  gateway alone (lexical at {DEFAULT_THRESHOLD}): right {right:.1%}, wrong {wrong:.1%}")
    print(f"  {'fused threshold':>15} {'right':>7} {'wrong':>7} {'worker answered':>16}")
    for threshold in FUSED:
        both = [g if g is not None else (w[0] if w is not None and w[1] >= threshold else None)
                for g, w in zip(gateway, worker, strict=True)]
        added = sum(g is None and b is not None for g, b in zip(gateway, both, strict=True))
        right, wrong = rates(both)
        print(f"  {threshold:>15.2f} {right:>7.1%} {wrong:>7.1%} {added:>16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, nargs="*", default=list(SETS))
    parser.add_argument("--embedding-model", type=Path, help="an embedding GGUF (default: the TF-IDF stand-in)")
    parser.add_argument("--query-instruction", default="", help="KEFU_EMBEDDING_QUERY_INSTRUCTION for the model")
    parser.add_argument("--force-calibration", action="store_true", help="use the measured anchors even where the "
                        "calibration refuses them (MIN_SPREAD, MIN_SELF_TOP1): what the worker would answer without them")
    args = parser.parse_args()
    encoder, model = None, "character TF-IDF stand-in"
    if args.embedding_model is not None:
        from models.settings import Settings
        from workers.llm.embedding import load_encoder

        encoder = load_encoder(Settings(embedding_model_path=args.embedding_model,
                                        embedding_query_instruction=args.query_instruction))
        model = args.embedding_model.name
    for path in args.data:
        evaluate(path, encoder, model, args.force_calibration)


if __name__ == "__main__":
    main()

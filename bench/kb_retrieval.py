"""Knowledge-base retrieval in the worker: speed on 10,000 passages, and what it finds on real customer questions.

    .venv/bin/python -m bench.kb_retrieval [--passages 10000] [--repeat 5] [--dense] [--embedding-model PATH]

Data: the ATEC 2018 customer-service question sets in tests/data/faq/ (tune + check; source and licence in
tests/data/README.md).

1. Quality (the index as grounding sees it, :class:`models.knowledge.passage_index.PassageIndex`): each FAQ entry
   of the ``check`` set is one passage (its question and similar questions); each query is a held-out real
   paraphrase (the passage it should find) or a real question annotators marked as meaning none of them (it should
   find nothing). Prints hit@1, hit@3, how often nothing came back, and for the others how often *something* did;
   then the same for several coverage floors on both sets.
2. Speed: 10,000 passages, each 8–16 real questions drawn with a fixed seed from every phrasing in both sets
   (about 150 characters; ``kefu kb import`` cuts at most 400); the build time of the index, and the latency of
   ``search(k=3)`` for every real query, ``--repeat`` times (p50, p99, max); then the worker's whole refresh:
   the passages stored in a SQLite knowledge base, loaded by :class:`workers.grounding.Knowledge` and indexed.
3. ``--dense``: the cost dense retrieval adds per question (:mod:`models.knowledge.dense`, ``workers/grounding.py``,
   :mod:`models.knowledge.fused_faq`): the similarity of one query vector with the passages' matrix and its top 3,
   reciprocal rank fusion with the lexical hits, and the FAQ's fused match over as many phrasings, on random
   unit vectors of ``--dimension`` (1,024: Qwen3-Embedding-0.6B and bge-m3); the FAQ's calibration when it is
   built; then one query and the passages encoded by an embedding GGUF through llama-cpp-python: a tiny
   random-weight qwen3 (tests/synthetic_gguf.py) unless ``--embedding-model`` names a real one. With random weights
   only llama.cpp's overhead is measured, not a real model's encode time (about 2 x its parameters floating-point
   operations per token: 1.2 GFLOP per token for a 0.6 B model), and no quality.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.faq_eval import DATA, load
from bench.stats import pct
from models.knowledge.faq import FaqEntry
from models.knowledge.passage_index import MIN_COVERAGE, PassageIndex

Queries = list[tuple[str, str | None]]  # (text, the id of the entry it paraphrases; None for an unrelated question)


def sets() -> dict[str, tuple[list[FaqEntry], Queries]]:
    return {part: load(DATA / f"atec_faq_{part}.json") for part in ("tune", "check")}


def retrieval(entries: list[FaqEntry], queries: Queries, floor: float = MIN_COVERAGE) -> dict[str, float]:
    """One passage per entry (its phrasings); for the paraphrases hit@1, hit@3 and how often nothing came back,
    for the unrelated questions how often something did (``found``; ``negatives`` of them)."""
    index = PassageIndex(["\n".join(e.questions) for e in entries], min_coverage=floor)
    position = {e.id: n for n, e in enumerate(entries)}
    hit1 = hit3 = empty = positives = negatives = found = 0
    for text, expect in queries:
        hits = [p for p, _ in index.search(text, 3)]
        if expect is None:
            negatives, found = negatives + 1, found + bool(hits)
            continue
        want = position[expect]
        positives, hit1, hit3, empty = positives + 1, hit1 + (hits[:1] == [want]), hit3 + (want in hits), empty + (not hits)
    return {"hit1": hit1 / positives, "hit3": hit3 / positives, "empty": empty / positives, "positives": positives,
            "found": found / max(negatives, 1), "negatives": negatives}


def quality() -> None:
    entries, queries = sets()["check"]
    r = retrieval(entries, queries)
    print(f"quality on ATEC check ({len(entries)} passages; {r['positives']} paraphrase queries, {r['negatives']} "
          "unrelated):")
    print(f"  paraphrases: hit@1 {r['hit1']:.1%}, hit@3 {r['hit3']:.1%}, nothing found {r['empty']:.1%}")
    print(f"  unrelated questions: nothing found {1 - r['found']:.1%} "
          f"(some passage found {r['found']:.1%} — the model is then told what it may use)")


def floors() -> None:
    """hit@3 and how many unrelated questions still get a passage, for several coverage floors, on both sets."""
    print("coverage floor: hit@3 / unrelated questions that still get a passage")
    data = sets()
    for floor in (0.12, 0.2, 0.3, 0.4, 0.5):
        cells = [f"{part}: {r['hit3']:.1%} / {r['found']:.1%} of {r['negatives']}"
                 for part, r in ((part, retrieval(*data[part], floor)) for part in ("tune", "check"))]
        print(f"  {floor:.2f}  " + "   ".join(cells))


def passages(n: int) -> tuple[list[str], list[str]]:
    data = sets()
    queries = [text for part in ("tune", "check") for text, _ in data[part][1]]
    pool = [p for part in ("tune", "check") for e in data[part][0] for p in e.questions] + queries
    rng = random.Random(12)
    texts = ["。".join(rng.sample(pool, rng.randint(8, 16))) + "。" for _ in range(n)]
    return texts, queries


def speed(n: int, repeat: int) -> None:
    texts, queries = passages(n)
    started = time.perf_counter()
    index = PassageIndex(texts)
    built = time.perf_counter() - started
    samples = []
    for _ in range(repeat):
        for query in queries:
            t = time.perf_counter()
            index.search(query, 3)
            samples.append(time.perf_counter() - t)
    print(f"speed: {n:,} passages (mean {statistics.mean(len(t) for t in texts):.0f} characters), index built in "
          f"{built:.2f} s")
    print(f"  search(k=3): {len(samples):,} real queries: p50 {pct(samples, 50):.2f} ms, p99 {pct(samples, 99):.2f} ms, "
          f"max {max(samples) * 1e3:.2f} ms")
    refresh(texts)


def refresh(texts: list[str]) -> None:
    """The worker's reload after a knowledge-base change: read every passage from SQLite, index them."""
    from models.infra.db import make_engine, make_session_factory, transaction
    from models.infra.migrate import upgrade
    from models.knowledge import store
    from models.knowledge.documents import ParsedDocument, Passage
    from models.settings import Settings
    from workers.grounding import Knowledge

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        upgrade(settings)
        engine = make_engine(settings)
        sessions = make_session_factory(engine)
        for d in range(0, len(texts), 100):  # 100 documents of 100 passages
            doc = ParsedDocument(f"doc{d}.md", f"文档{d}", "markdown", f"{d:064x}",
                                 passages=tuple(Passage("", t) for t in texts[d:d + 100]))
            with transaction(sessions) as session:
                store.import_document(session, doc)
        knowledge = Knowledge(sessions)
        started = time.perf_counter()
        grounding = knowledge.lookup("借呗额度怎么提升")
        loaded = time.perf_counter() - started
        engine.dispose()
    assert grounding is not None
    print(f"  worker refresh (SQLite read + index of {len(texts):,} passages, then one lookup): {loaded:.2f} s")


def _timed(samples: list[float]) -> str:
    return f"p50 {pct(samples, 50):.2f} ms, p99 {pct(samples, 99):.2f} ms"


def dense(n: int, repeat: int, dimension: int, model: Path | None, encode: int) -> None:
    """What dense retrieval adds per question on ``n`` passages and ``n`` FAQ phrasings, and what encoding costs."""
    import numpy as np

    from models.knowledge.dense import DenseIndex, reciprocal_rank_fusion
    from models.knowledge.fused_faq import DenseFaq, calibrate

    texts, queries = passages(n)
    rng = np.random.default_rng(7)

    def unit(rows: int) -> np.ndarray:
        v = rng.standard_normal((rows, dimension)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    lexical, matrix = PassageIndex(texts), DenseIndex(texts, unit(n), "random")
    entries = [FaqEntry(f"e{at}", texts[at][:20], "", tuple(texts[at][20 * k:20 * k + 20] for k in range(1, 5)))
               for at in range(n // 5)]  # n phrasings: n/5 entries of 5
    phrasings = [q for e in entries for q in e.questions]
    owners = [at for at, e in enumerate(entries) for _ in e.questions]
    started = time.perf_counter()
    calibration = calibrate(DenseIndex(phrasings, unit(len(phrasings)), "random").vectors, owners)
    calibrated = time.perf_counter() - started
    faq = DenseFaq(entries, DenseIndex(phrasings, unit(len(phrasings)), "random"), owners, calibration)
    if faq.calibration is None:  # random vectors cannot be calibrated; time the match with a made-up scale
        from models.knowledge.fused_faq import Calibration
        faq = DenseFaq(entries, faq.index, owners, Calibration(0.8, 0.2))
    vectors = unit(len(queries))
    grounding, faq_match, fused_only = [], [], []
    for _ in range(repeat):
        for query, vector in zip(queries, vectors, strict=True):
            t = time.perf_counter()
            hits = [p for p, _ in lexical.search(query, 3)]
            t1 = time.perf_counter()
            reciprocal_rank_fusion([hits, [p for p, _ in matrix.search(vector[None, :], 3)]])[:3]
            t2 = time.perf_counter()
            faq.match(vector[None, :])
            t3 = time.perf_counter()
            grounding.append(t2 - t)
            fused_only.append(t2 - t1)
            faq_match.append(t3 - t2)
    print(f"dense: {n:,} passages and {len(phrasings):,} FAQ phrasings as random unit vectors of {dimension} "
          f"({matrix.vectors.nbytes / 2**20:.0f} MiB); {len(queries):,} real queries x {repeat}:")
    print(f"  dot product + top 3 + rank fusion: {_timed(fused_only)}; with the lexical search: {_timed(grounding)}")
    print(f"  FAQ dense match (dot product, best per entry, margin): {_timed(faq_match)}; "
          f"calibration at build: {calibrated * 1e3:.0f} ms")
    encoding(model, texts[:encode], queries)


def encoding(model: Path | None, texts: list[str], queries: list[str]) -> None:
    from models.settings import Settings
    from workers.llm.embedding import load_encoder

    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            from tests.synthetic_gguf import write_qwen3_gguf
            model = write_qwen3_gguf(Path(tmp) / "tiny-embedding.gguf", pooling_type=3)
            what = "tiny random-weight qwen3 GGUF (64 dimensions, 2 layers: llama.cpp's overhead, not a model's cost)"
        else:
            what = f"{model.name}"
        encoder = load_encoder(Settings(embedding_model_path=model, n_gpu_layers=None))
        assert encoder is not None
        started = time.perf_counter()
        encoder.load()
        loaded = time.perf_counter() - started
        samples = []
        for query in queries[:200]:
            t = time.perf_counter()
            encoder.encode_query(query)
            samples.append(time.perf_counter() - t)
        started = time.perf_counter()
        encoder.encode(texts)
        bulk = time.perf_counter() - started
        encoder.close()
    print(f"  encoding with {what}: loaded in {loaded:.2f} s; one query ({len(samples)} real ones): {_timed(samples)}; "
          f"{len(texts):,} passages in {bulk:.2f} s ({len(texts) / bulk:.0f}/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dense", action="store_true", help="also the cost of dense retrieval")
    parser.add_argument("--dimension", type=int, default=1024, help="of the random vectors (--dense)")
    parser.add_argument("--embedding-model", type=Path, help="an embedding GGUF to time (--dense; default: tiny)")
    parser.add_argument("--encode", type=int, default=1000, help="passages to encode with the GGUF (--dense)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    quality()
    floors()
    speed(args.passages, args.repeat)
    if args.dense:
        dense(args.passages, args.repeat, args.dimension, args.embedding_model, args.encode)


if __name__ == "__main__":
    main()

"""Writes atec_faq_eval.json from ATEC 2018's atec_nlp_sim_train.csv (see tests/data/README.md). Run once:

    python tests/data/faq/make_sample.py PATH/atec_nlp_sim_train.csv tune > tests/data/faq/atec_faq_tune.json
    python tests/data/faq/make_sample.py PATH/atec_nlp_sim_train.csv check > tests/data/faq/atec_faq_check.json
    python tests/data/faq/make_sample.py PATH/BQ_corpus/test.csv bq > tests/data/faq/bq_faq_check.json

Paraphrase pairs (label 1) are joined into clusters of the same meaning (union-find). ``tune`` (the set the
default threshold was chosen on): every cluster of three or more and a seeded sample of pairs become FAQ entries;
``check`` (held out): another 200 pairs, none in ``tune``; ``bq`` (held out, another bank's customers): 200
clusters of any size sampled from BQ's, at most 6 phrasings each. In all: the first phrasing is the question, the last
is held out as the customer's query, the rest are similar questions. Negatives are real customer questions the
annotators marked as NOT meaning an FAQ entry's question (label 0 with one of its phrasings) and not in any FAQ
entry: the answer to them is to abstain.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from collections import defaultdict

ENTRIES = 200
SEED = 12
MAX_PHRASINGS = 6


def main(path: str, part: str) -> None:
    with open(path, encoding="utf-8-sig", newline="") as f:
        if part == "bq":  # BQ corpus: a CSV with a header, sentence1,sentence2,label
            rows = [(a.strip(), b.strip(), label) for a, b, label in list(csv.reader(f))[1:]]
        else:  # ATEC: id, sentence, sentence, label, tab-separated
            rows = [(a.strip(), b.strip(), label) for _, a, b, label in csv.reader(f, delimiter="\t")]
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, label in rows:
        if label == "1" and a != b:
            parent[root(a)] = root(b)
    clusters: dict[str, list[str]] = defaultdict(list)
    for a, b, label in rows:  # file order: deterministic
        if label == "1":
            for x in (a, b):
                if x not in clusters[root(x)]:
                    clusters[root(x)].append(x)
    groups = [c for c in clusters.values() if len(c) >= 2]
    big = [c for c in groups if len(c) >= 3]
    pairs = [c for c in groups if len(c) == 2]
    shuffled = random.Random(SEED).sample(pairs, len(pairs))
    tune = big + shuffled[:ENTRIES - len(big)]
    chosen = tune if part == "tune" else shuffled[ENTRIES - len(big):][:ENTRIES]
    if part == "bq":  # every cluster size, at most MAX_PHRASINGS phrasings each (the first ones, file order)
        chosen = [c[:MAX_PHRASINGS] for c in random.Random(SEED).sample(groups, ENTRIES)]
    in_faq = {x: n for n, c in enumerate(chosen) for x in c}
    prefix = "bq" if part == "bq" else "atec"
    entries = [{"id": f"{prefix}:{n}", "question": c[0], "similar": c[1:-1]} for n, c in enumerate(chosen)]
    queries = [{"text": c[-1], "expect": f"{prefix}:{n}"} for n, c in enumerate(chosen)]
    negatives: dict[str, None] = {}
    for a, b, label in rows:
        if label == "0":
            for x, y in ((a, b), (b, a)):
                if x in in_faq and y not in in_faq and root(y) != root(x):
                    negatives.setdefault(y, None)
    picked = random.Random(SEED).sample(sorted(negatives), min(len(negatives), len(queries)))
    queries += [{"text": text, "expect": None} for text in picked]
    source = ("BQ corpus test.csv (WeBank customer-service question pairs)" if part == "bq" else
              "ATEC 2018 atec_nlp_sim_train.csv (Ant Financial customer-service question pairs)")
    json.dump({"source": source,
               "made_by": f"tests/data/faq/make_sample.py {part}", "seed": SEED, "entries": entries, "queries": queries},
              sys.stdout, ensure_ascii=False, indent=0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

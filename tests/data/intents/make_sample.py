"""How tests/data/intents/real_dev.tsv and real_heldout.tsv were drawn (labels were then added by hand).

    python tests/data/intents/make_sample.py STC3_test_data_cn.json > unlabelled.tsv

Deterministic (``random.Random(12)``). Sources: the first customer turn of 100 STC-3 Weibo helpdesk dialogues
(``data/test_data_cn.json`` of github.com/SB233/stc3-dataset), 100 ATEC and 50 BQ customer questions (the queries
of tests/data/faq/atec_faq_check.json, atec_faq_tune.json and bq_faq_check.json), and 25 messages labelled
``request`` in tests/data/handoff/real.tsv. Each drawn sentence goes to ``dev`` or ``heldout`` by a second draw.
Output lines: ``split<TAB>source<TAB>id<TAB>?<TAB>text`` (tabs and newlines in a text become spaces).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def flat(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def main(stc3: str) -> None:
    rng = random.Random(12)
    dialogues = json.loads(Path(stc3).read_text(encoding="utf-8"))
    weibo = [(f"dialogue {d['id']}", flat(" ".join(d["turns"][0]["utterances"]))) for d in dialogues
             if d["turns"] and d["turns"][0]["sender"] == "customer"]
    faq = ROOT / "tests/data/faq"
    atec = [(f"{name} query {n}", q["text"]) for name in ("atec_faq_check", "atec_faq_tune")
            for n, q in enumerate(json.loads((faq / f"{name}.json").read_text(encoding="utf-8"))["queries"])]
    bq = [(f"bq_faq_check query {n}", q["text"])
          for n, q in enumerate(json.loads((faq / "bq_faq_check.json").read_text(encoding="utf-8"))["queries"])]
    handoff = []
    for line in (ROOT / "tests/data/handoff/real.tsv").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        source, id_, label, text = line.split("\t", 3)
        if label == "request":
            handoff.append((f"{source} {id_}", text))
    drawn = ([("stc3_weibo", *x) for x in rng.sample(weibo, 100)] + [("atec", *x) for x in rng.sample(atec, 100)]
             + [("bq", *x) for x in rng.sample(bq, 50)] + [("handoff_real", *x) for x in rng.sample(handoff, 25)])
    for source, id_, text in drawn:
        split = "dev" if rng.random() < 0.5 else "heldout"
        print(f"{split}\t{source}\t{id_}\t?\t{flat(text)}")


if __name__ == "__main__":
    main(sys.argv[1])

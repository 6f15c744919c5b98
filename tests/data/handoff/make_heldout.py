"""Lists the candidates of the held-out hand-off set, ``heldout.tsv`` (see tests/data/README.md), with label ``?``:

    python tests/data/handoff/make_heldout.py AFQMC_DIR ATEC_TRAIN_CSV > candidates.tsv

``AFQMC_DIR``: the unzipped ``afqmc_public.zip`` (``train.json``, ``dev.json``, ``test.json``: CLUE's AFQMC, Ant
Financial's question pairs); ``ATEC_TRAIN_CSV``: the ATEC file ``real.tsv`` was drawn from. The rule: every distinct
sentence (blanks collapsed) of train, dev, test in that order, ``sentence1`` before ``sentence2``, that matches
``real.tsv``'s expression and is neither in the ATEC file nor in ``real.tsv`` (compared without blanks): customer
messages the detector's rules were never written against. Labels are then written by hand, by reading each line.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PERSON = re.compile("人工|真人|转接|活人|找人|接人|人呢|有人|经理|客服|小二|人类|机器人")  # real.tsv's selection
REAL = Path(__file__).resolve().parent / "real.tsv"


def bare(text: str) -> str:
    return "".join(text.split())


def main(afqmc: Path, atec_csv: Path) -> None:
    known = {bare(line.split("\t", 3)[3]) for line in REAL.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")}
    for line in atec_csv.read_text(encoding="utf-8-sig").splitlines():
        known.update(bare(cell) for cell in line.split("\t")[1:3])
    print("# source\tid\tlabel\ttext")
    for part in ("train", "dev", "test"):
        for number, line in enumerate((afqmc / f"{part}.json").read_text(encoding="utf-8").splitlines(), 1):
            pair = json.loads(line)
            for field in ("sentence1", "sentence2"):
                text = " ".join(pair[field].split())
                if PERSON.search(text) and bare(text) not in known:
                    known.add(bare(text))
                    print(f"afqmc\t{part}.json line {number} {field}\t?\t{text}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

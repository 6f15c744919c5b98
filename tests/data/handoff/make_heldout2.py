"""Lists the candidates of the second held-out hand-off set, ``heldout2.tsv`` (see tests/data/README.md), label ``?``:

    python tests/data/handoff/make_heldout2.py chat_0.1per.txt dev_question.txt > candidates.tsv

Both files are JDDC (JD Dialogue Challenge) data as republished in github.com/EndlessLethe/jddc2019-3th-retrieve-model
(``data/chat_0.1per.txt``: a 0.1 % sample of JDDC's ``chat.txt``, one turn a line, tab-separated, the third field 0
when the customer sent it; ``data/dev_question.txt``: the JDDC 2019 development sessions, customer turns on ``Q:``
lines and in ``<Qn>`` elements, several messages of one turn joined by ``!@@@!``). The rule: every customer turn, in
file order (chat sample first), whose text matches ``real.tsv``'s expression and is neither in ``real.tsv`` nor in
``heldout.tsv`` nor already listed (compared without blanks). In the development file the turn's messages are joined
with a space, as the chat sample joins them, and the platform's note "用户发起转人工" (the customer pressed the
hand-off button: no words of theirs) is removed first. Labels are then written by hand, by reading each line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

from make_heldout import PERSON, bare  # real.tsv's selection, as heldout.tsv's (this folder is on sys.path)

HERE = Path(__file__).resolve().parent
BUTTON = "用户发起转人工"  # written by the platform when the hand-off button is pressed
_DEV_TURN = re.compile(r"^Q:\t(.*)$|^<Q\d+>(.*)</Q\d+>$")


def chat_turns(path: Path) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) == 7 and fields[2] == "0":
            yield f"chat_0.1per.txt line {number}", fields[6]


def dev_turns(path: Path) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _DEV_TURN.match(line)
        if match:
            parts = [p for p in (match.group(1) or match.group(2)).split("!@@@!") if p.strip() != BUTTON]
            yield f"dev_question.txt line {number}", " ".join(parts)


def main(chat: Path, dev: Path) -> None:
    known: set[str] = set()
    for name in ("real.tsv", "heldout.tsv"):
        known.update(bare(line.split("\t", 3)[3]) for line in (HERE / name).read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.startswith("#"))
    print("# source\tid\tlabel\ttext")
    for where, raw in (*chat_turns(chat), *dev_turns(dev)):
        text = " ".join(raw.split())
        if PERSON.search(text) and bare(text) not in known:
            known.add(bare(text))
            print(f"jddc\t{where}\t?\t{text}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

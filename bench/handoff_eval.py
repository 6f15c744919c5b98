"""Hand-off detection on labelled customer messages: precision, recall, ask-backs, speed; and the old baseline.

    .venv/bin/python bench/handoff_eval.py [--show-errors] [FILE.tsv …] [--stc3 train_data_cn.json test_data_cn.json]

Default files: ``tests/data/handoff/real.tsv`` (public, real customer messages labelled by hand; the targets
apply to it) and ``tests/data/handoff/edge_cases.tsv`` (hand-written, reported apart). Each line:
``source<TAB>id<TAB>label<TAB>text`` with label ``request``, ``unclear`` or ``not``; ``#`` lines are comments.

Figures, per file, for the new detector (:func:`models.handoff_detect.detect`) and the baseline (the substring
rule Kefu used before, kept here verbatim as :func:`baseline`):

- recall: messages labelled ``request`` that reach a person — handed off at once (REQUEST) or after the ask-back
  (UNCLEAR); ``strict recall`` counts REQUEST only.
- precision: of the messages handed off at once (REQUEST), the share labelled ``request``.
- needless ask-backs: messages labelled ``not`` that got UNCLEAR.
- speed: microseconds per message (mean and p99 over the messages), each message timed alone 5 times and the
  fastest kept (on a busy machine single timings mostly measure the scheduler), after one warm-up pass.
- negative wording (:func:`models.handoff_detect.negative_word`, which hands off where a person can take over):
  how many messages of each source contain one (no labels: the share tells how often it would fire).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import pct  # noqa: E402
from models.evaluation.datasets import TsvLine, read_handoff_tsv  # noqa: E402
from models.evaluation.metrics import HandoffScore, handoff_error, handoff_score  # noqa: E402
from models.handoff_detect import Verdict, detect, negative_word  # noqa: E402

DEFAULT_FILES = (ROOT / "tests/data/handoff/real.tsv", ROOT / "tests/data/handoff/edge_cases.tsv")
BASELINE_KEYWORDS = ("转人工", "人工客服", "真人客服", "找人工", "人工服务")  # the old default handoff_keywords
_NEGATIONS = ("不用", "不要", "不需要", "无需", "不必", "没必要")
_CLAUSE_BREAK = re.compile(r"[，,。.!！?？;；、\s]")


def baseline(text: str) -> Verdict:
    """models.dialogue.wants_human as it was before issue 12 (default keywords), as a verdict."""
    folded = text.casefold().strip(" 。.!！?？")
    if folded == "人工":
        return Verdict.REQUEST
    for keyword in BASELINE_KEYWORDS:
        at = folded.find(keyword)
        while at >= 0:
            clause = _CLAUSE_BREAK.split(folded[max(0, at - 4):at])[-1]
            if not (clause.endswith("别") or any(n in clause for n in _NEGATIONS)):
                return Verdict.REQUEST
            at = folded.find(keyword, at + 1)
    return Verdict.NOT


read = read_handoff_tsv  # the reader `kefu eval` uses: it checks every label


REPEATS = 5  # each message is timed this often and the fastest kept: the code's cost, not the scheduler's


def _timed(verdict_of: Callable[[str], Verdict], text: str) -> float:
    started = time.perf_counter()
    verdict_of(text)
    return time.perf_counter() - started


@dataclass
class Score:
    counts: HandoffScore
    micros: float = 0.0
    p99_micros: float = 0.0

    def line(self, name: str) -> str:
        c = self.counts
        return (f"  {name:<9} recall {c.recall or 1.0:7.2%} ({c.reached}/{c.requests})  strict recall "
                f"{c.strict_recall or 1.0:7.2%}  precision {c.precision or 1.0:7.2%} ({c.handed_off_right}/{c.handed_off})  "
                f"needless ask-backs {c.needless_ask_backs}  {self.micros:.0f} µs/message (p99 {self.p99_micros:.0f})")


def score(examples: list[TsvLine], verdict_of: Callable[[str], Verdict], errors: list[str] | None = None) -> Score:
    for example in examples:  # warm-up (regex compilation, caches)
        verdict_of(example.text)
    verdicts, took = [], []
    for example in examples:
        verdicts.append(verdict_of(example.text))
        took.append(min(_timed(verdict_of, example.text) for _ in range(REPEATS)))
    result = Score(handoff_score((e.label, str(v)) for e, v in zip(examples, verdicts, strict=True)))
    result.micros = sum(took) / max(1, len(took)) * 1e6
    result.p99_micros = pct(took, 99) * 1e3 if took else 0.0
    for example, verdict in zip(examples, verdicts, strict=True):
        if handoff_error(example.label, str(verdict)) and errors is not None:
            errors.append(f"    {example.label:>7} -> {verdict:<7} {example.source} {example.ident}: {example.text[:80]}")
    return result


def unseen(paths: list[Path], show: bool) -> None:
    """Hand-offs and ask-backs on STC-3 customer utterances the labelled set does not hold."""
    labelled = {e.text for e in read(DEFAULT_FILES[0])}
    texts = sorted({" ".join(u.split()) for path in paths for dialogue in json.loads(path.read_text(encoding="utf-8"))
                    for turn in dialogue["turns"] if turn["sender"] == "customer" for u in turn["utterances"]
                    if u.strip()} - labelled)
    for name, verdict_of in (("detector", lambda text: detect(text).verdict), ("baseline", baseline)):
        verdicts = [verdict_of(text) for text in texts]
        print(f"STC-3 unseen customer utterances: {len(texts)}; {name}: hand-offs {verdicts.count(Verdict.REQUEST)}, "
              f"ask-backs {verdicts.count(Verdict.UNCLEAR)}")
        if show and name == "detector":
            print("\n".join(f"    {text[:80]}" for text, v in zip(texts, verdicts, strict=True) if v is Verdict.REQUEST))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, default=list(DEFAULT_FILES))
    parser.add_argument("--show-errors", action="store_true", help="print every miss and wrong hand-off")
    parser.add_argument("--stc3", nargs="+", type=Path, default=[], metavar="JSON",
                        help="STC-3 data/*_cn.json files (data.zip of sakai-lab/stc3-dataset): count the hand-offs and "
                             "ask-backs on every customer utterance that is not in real.tsv (unlabelled, unseen)")
    args = parser.parse_args(argv)
    if args.stc3:
        unseen(args.stc3, args.show_errors)
    for path in args.files:
        examples = read(path)
        labels = {label: sum(e.label == label for e in examples) for label in ("request", "unclear", "not")}
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {len(examples)} messages {labels}")
        errors: list[str] = []
        print(score(examples, lambda text: detect(text).verdict, errors).line("detector"))
        print(score(examples, baseline).line("baseline"))
        if args.show_errors:
            print("\n".join(errors) or "    (no errors)")
        sources = sorted({e.source for e in examples})
        counts = {s: (sum(e.source == s and negative_word(e.text) is not None for e in examples),
                      sum(e.source == s for e in examples)) for s in sources}
        print("  negative wording: " + ", ".join(f"{s} {hit}/{total}" for s, (hit, total) in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

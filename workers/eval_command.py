"""``kefu eval DATASET [--faq FILE | --kb] [--json]``: Kefu's decisions on a labelled set, and how often they are right.

The set is read by :func:`models.evaluation.datasets.read` (JSONL, the hand-off/intent TSV, an FAQ set's JSON).
For each label the set has, every message gets the decision the service would make and the figures of
:mod:`models.evaluation.metrics` are printed:

- ``expected_faq``: the FAQ's best entry and its confidence (keyword rules first, as
  :meth:`~models.knowledge.faq_index.FaqIndex.lookup`); answered right / wrong / abstained at
  ``KEFU_FAQ_THRESHOLD``, top-1 with no threshold, and a short threshold curve. The FAQ matched against: ``--faq
  FILE`` (:func:`~models.evaluation.datasets.read_faq`); else an FAQ set's own entries; else, or with ``--kb``,
  the configured one: ``KEFU_FAQ`` and the knowledge base's FAQ sheets (:func:`models.knowledge.store.faq_rows`).
  An expected entry is named by its id or its question.
- ``intent``: :func:`models.intents.classify`'s label; accuracy, precision and recall per label, the most frequent
  confusions.
- ``handoff``: :func:`models.handoff_detect.detect` with ``KEFU_HANDOFF_KEYWORDS``; recall (UNCLEAR counts as
  reaching a person: the customer is asked back), strict recall, precision, needless ask-backs.
- latency: p50/p99 per decision, each message timed once after an untimed warm-up pass over them all
  (milliseconds, this process, one thread).

Exit status: 0; 1 when the set or the FAQ file cannot be used (the message names the file, line and field) or
an expected entry is not in the FAQ; 2 when the knowledge base's database cannot be read. ``--json`` prints the
same figures as one JSON object (rates as fractions, None where there was nothing to count); ``--errors`` adds
each wrong decision with where it is in the set (file:line) and the message's text.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from models.evaluation import metrics
from models.evaluation.datasets import Case, DatasetError, LabelledSet, read, read_faq
from models.handoff_detect import detect
from models.intents import classify
from models.knowledge.faq import FaqEntry
from models.knowledge.faq_index import FaqIndex
from models.settings import Settings

CURVE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)  # plus the configured threshold


class KnowledgeBaseUnavailable(Exception):
    """The configured FAQ's database could not be read."""


@dataclass
class Report:
    dataset: str
    messages: int
    faq: dict[str, Any] | None = None
    intent: dict[str, Any] | None = None
    handoff: dict[str, Any] | None = None
    latency_ms: dict[str, dict[str, float | int]] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None  # with --errors: each wrong decision, where it is in the set

    def wrong(self, kind: str, case: Case, expected: object, got: object) -> None:
        if self.errors is not None:
            self.errors.append({"decision": kind, "where": case.where, "expected": expected, "got": got,
                                "text": case.text})


def _timed(decide: Callable[[str], Any], cases: Sequence[Case]) -> tuple[list[Any], dict[str, float | int]]:
    results, took = [], []
    for case in cases:  # an untimed warm-up pass: a first call may build an index or compile patterns
        decide(case.text)
    for case in cases:
        started = time.perf_counter()
        results.append(decide(case.text))
        took.append(time.perf_counter() - started)
    return results, {"p50": metrics.pct(took, 50), "p99": metrics.pct(took, 99), "decisions": len(took)}


def configured_faq(settings: Settings) -> tuple[FaqEntry, ...]:
    """``KEFU_FAQ`` and every FAQ entry of the knowledge base, as the service's index holds them."""
    from models.infra.db import make_engine, make_session_factory
    from models.knowledge import store
    from models.knowledge.faq_cache import from_settings

    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            rows = store.faq_rows(session)
    except SQLAlchemyError as exc:
        raise KnowledgeBaseUnavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    finally:
        engine.dispose()
    return (*from_settings(settings.faq), *(row.entry() for row in rows))


def choose_faq(settings: Settings, labelled: LabelledSet, faq_file: Path | None,
               use_kb: bool) -> tuple[str, tuple[FaqEntry, ...]]:
    if faq_file is not None:
        return str(faq_file), read_faq(faq_file)
    if labelled.faq is not None and not use_kb:
        return "the set's own FAQ", labelled.faq
    return "KEFU_FAQ and the knowledge base", configured_faq(settings)


def expected_ids(cases: Sequence[Case], entries: Sequence[FaqEntry], source: str) -> list[str | None]:
    """Each case's expected entry as an id (named by id or by question)."""
    names: dict[str, str] = {}
    for entry in entries:
        names.setdefault(entry.id, entry.id)
    for entry in entries:
        if entry.question:
            names.setdefault(entry.question, entry.id)
    found = []
    for case in cases:
        if case.expected_faq is not None and case.expected_faq not in names:
            raise DatasetError(f"{case.where}: expected_faq: {case.expected_faq!r} is neither an entry id nor a "
                               f"question of the FAQ ({source}, {_entries(len(entries))})")
        found.append(names[case.expected_faq] if case.expected_faq is not None else None)
    return found


def evaluate_faq(settings: Settings, cases: Sequence[Case], source: str, entries: Sequence[FaqEntry],
                 report: Report) -> None:
    expected = expected_ids(cases, entries, source)
    if not entries:
        report.faq = {"available": False, "why": f"no FAQ entries ({source})", "labelled": len(cases)}
        return
    index = FaqIndex(entries)

    def best(text: str) -> tuple[str | None, float]:
        rule = index.keyword_rule(text)
        if rule is not None:
            return rule.entry.id, rule.confidence
        found = max(index.search(text, k=2), key=lambda m: m.confidence, default=None)
        return (found.entry.id, found.confidence) if found is not None else (None, 0.0)

    results, report.latency_ms["faq"] = _timed(best, cases)
    outcomes = [metrics.FaqOutcome(b, c, e) for (b, c), e in zip(results, expected, strict=True)]
    at = metrics.faq_at(outcomes, settings.faq_threshold)
    for case, o in zip(cases, outcomes, strict=True):
        if o.best is not None and o.confidence >= settings.faq_threshold and o.best != o.expected:
            report.wrong("faq", case, o.expected or "(abstain)", f"{o.best} ({o.confidence:.2f})")
    report.faq = {
        "available": True, "faq": source, "entries": len(entries), "labelled": len(cases),
        "threshold": settings.faq_threshold, "top1": metrics.top1(outcomes), "at_threshold": _faq_figures(at),
        "curve": [_faq_figures(metrics.faq_at(outcomes, t)) for t in sorted({*CURVE, settings.faq_threshold})],
    }


def _faq_figures(at: metrics.FaqAt) -> dict[str, Any]:
    return {"threshold": at.threshold, "queries": at.queries, "expecting_an_entry": at.positives,
            "right": at.right, "wrong": at.wrong, "wrong_to_abstainers": at.wrong_negative,
            "abstained": at.abstained, "right_rate": at.right_rate, "wrong_rate": at.wrong_rate,
            "abstained_rate": at.abstained_rate}


def evaluate_intents(settings: Settings, cases: Sequence[Case], report: Report) -> None:
    labels, report.latency_ms["intent"] = _timed(lambda text: str(classify(settings, text).label), cases)
    pairs = [(str(case.intent), label) for case, label in zip(cases, labels, strict=True)]
    for case, (want, got) in zip(cases, pairs, strict=True):
        if got != want:
            report.wrong("intent", case, want, got)
    right = sum(want == got for want, got in pairs)
    report.intent = {"labelled": len(cases), "right": right,
                     "accuracy": metrics.rate(right, len(cases)),
                     "labels": {s.label: {"expected": s.expected, "given": s.given, "right": s.right,
                                          "precision": s.precision, "recall": s.recall}
                                for s in metrics.intent_scores(pairs)},
                     "confusions": [{"expected": want, "given": got, "count": n}
                                    for want, got, n in metrics.confusions(pairs)]}


def evaluate_handoff(settings: Settings, cases: Sequence[Case], report: Report) -> None:
    phrases = tuple(settings.handoff_keywords)
    verdicts, report.latency_ms["handoff"] = _timed(lambda text: str(detect(text, phrases).verdict), cases)
    score = metrics.handoff_score((str(case.handoff), verdict) for case, verdict in zip(cases, verdicts, strict=True))
    labels = {label: sum(case.handoff == label for case in cases) for label in metrics.HANDOFF_LABELS}
    for case, verdict in zip(cases, verdicts, strict=True):
        if metrics.handoff_error(str(case.handoff), verdict):
            report.wrong("handoff", case, case.handoff, verdict)
    report.handoff = {"labelled": len(cases), "labels": labels, "requests": score.requests,
                      "reached": score.reached, "at_once": score.at_once, "handed_off": score.handed_off,
                      "handed_off_right": score.handed_off_right, "recall": score.recall,
                      "strict_recall": score.strict_recall, "precision": score.precision,
                      "needless_ask_backs": score.needless_ask_backs}


def evaluate(settings: Settings, labelled: LabelledSet, faq_file: Path | None = None, use_kb: bool = False,
             errors: bool = False) -> Report:
    """Raises DatasetError (the set, the FAQ file, an unknown expected entry) or KnowledgeBaseUnavailable.
    ``errors``: also list each wrong decision (an FAQ answer of another entry or where it should abstain, an intent
    other than the label, a request that reaches nobody or a hand-off at once not labelled request)."""
    report = Report(str(labelled.path), len(labelled.cases), errors=[] if errors else None)
    faq_cases = [c for c in labelled.cases if c.faq_labelled]
    if faq_cases:
        source, entries = choose_faq(settings, labelled, faq_file, use_kb)
        evaluate_faq(settings, faq_cases, source, entries, report)
    intent_cases = [c for c in labelled.cases if c.intent is not None]
    if intent_cases:
        evaluate_intents(settings, intent_cases, report)
    handoff_cases = [c for c in labelled.cases if c.handoff is not None]
    if handoff_cases:
        evaluate_handoff(settings, handoff_cases, report)
    return report


def _entries(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'}"


def _pc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _render_intent_labels(intent: dict[str, Any]) -> list[str]:
    lines = [f"  {label:<15} precision {_pc(x['precision']):>6} ({x['right']}/{x['given']})  "
             f"recall {_pc(x['recall']):>6} ({x['right']}/{x['expected']})" for label, x in intent["labels"].items()]
    top = ", ".join(f"{c['expected']}->{c['given']} {c['count']}" for c in intent["confusions"])
    return [*lines, f"  most frequent confusions (expected->given): {top or 'none'}"]


def render(report: Report) -> str:
    lines = [f"kefu eval {report.dataset}: {report.messages} labelled messages"]
    if report.faq is not None:
        lines += _render_faq(report.faq)
    if report.intent is not None:
        i = report.intent
        lines.append(f"\nIntents ({i['labelled']} labelled): accuracy {_pc(i['accuracy'])} ({i['right']}/{i['labelled']})")
        lines += _render_intent_labels(i)
    if report.handoff is not None:
        lines += _render_handoff(report.handoff)
    if report.latency_ms:
        lines.append("\nLatency per decision (ms, each message timed once, after a warm-up pass):")
        lines += [f"  {name:<8} p50 {t['p50']:.3f}  p99 {t['p99']:.3f}  ({t['decisions']} decisions)"
                  for name, t in report.latency_ms.items()]
    if report.errors is not None:
        lines += _render_errors(report.errors)
    return "\n".join(lines)


def _render_errors(errors: list[dict[str, Any]]) -> list[str]:
    return [f"\nWrong decisions ({len(errors)}):"] + [
        f"  {e['decision']:<8} {e['where']}: expected {e['expected']}, got {e['got']}: {e['text'][:60]}" for e in errors]


def _render_faq(f: dict[str, Any]) -> list[str]:
    if not f["available"]:
        return [f"\nFAQ ({f['labelled']} labelled): not evaluated: {f['why']}"]
    at = f["at_threshold"]
    out = [f"\nFAQ ({f['labelled']} labelled; matched against {f['faq']}: {_entries(f['entries'])})",
           f"  at KEFU_FAQ_THRESHOLD {f['threshold']:.2f}: answered right {_pc(at['right_rate'])} "
           f"({at['right']}/{at['expecting_an_entry']} expecting an entry), wrong {_pc(at['wrong_rate'])} "
           f"({at['wrong']}/{at['queries']}; {at['wrong_to_abstainers']} to messages that should abstain), "
           f"abstained {_pc(at['abstained_rate'])} ({at['abstained']}/{at['queries']})",
           f"  top-1 with no threshold: {_pc(f['top1'])} of {at['expecting_an_entry']}",
           f"  {'threshold':>9} {'right':>7} {'wrong':>7} {'abstained':>10}"]
    for point in f["curve"]:
        mark = "  <- KEFU_FAQ_THRESHOLD" if point["threshold"] == f["threshold"] else ""
        out.append(f"  {point['threshold']:>9.2f} {_pc(point['right_rate']):>7} {_pc(point['wrong_rate']):>7} "
                   f"{_pc(point['abstained_rate']):>10}{mark}")
    return out


def _render_handoff(h: dict[str, Any]) -> list[str]:
    labels = ", ".join(f"{n} {label}" for label, n in h["labels"].items())
    return [f"\nHand-off ({h['labelled']} labelled: {labels})",
            f"  recall {_pc(h['recall'])} ({h['reached']}/{h['requests']} requests reach a person; an ask-back "
            f"(UNCLEAR) counts, a yes to it hands off), strict recall {_pc(h['strict_recall'])} "
            f"({h['at_once']}/{h['requests']} handed off at once)",
            f"  precision {_pc(h['precision'])} ({h['handed_off_right']}/{h['handed_off']} hand-offs at once were "
            f"labelled request)",
            f"  needless ask-backs: {h['needless_ask_backs']} of {h['labels']['not']} labelled not"]


def run(settings: Settings, dataset: str, faq_file: str | None = None, use_kb: bool = False, as_json: bool = False,
        show_errors: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        report = evaluate(settings, read(Path(dataset)), Path(faq_file) if faq_file else None, use_kb, show_errors)
    except DatasetError as exc:
        print(f"kefu: {exc}", file=err)
        return 1
    except KnowledgeBaseUnavailable as exc:
        print(f"kefu: the knowledge base's FAQ cannot be read ({exc}); has `kefu migrate` been run? "
              "(--faq FILE evaluates against a file instead)", file=err)
        return 2
    print(json.dumps(asdict(report), ensure_ascii=False, indent=2) if as_json else render(report), file=out)
    return 0

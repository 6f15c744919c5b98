"""Labelled evaluation sets and FAQ files, read into frozen values; a bad file raises :class:`DatasetError`.

:func:`read` knows three formats, by the file's suffix:

- ``.jsonl``: one JSON object per line: ``text`` (required) and any of ``expected_faq`` (an FAQ entry's id or
  question; ``null``: the FAQ should abstain), ``intent`` (a label), ``handoff`` (``request``, ``unclear`` or
  ``not``); ``id``, ``source`` and ``note`` are allowed and ignored. Every line needs at least one label.
- ``.tsv``: ``source<TAB>id<TAB>label<TAB>text`` per line, ``#`` lines are comments (``tests/data/handoff/``,
  ``tests/data/intents/``): hand-off labels when every label is ``request``/``unclear``/``not``, else intents.
- ``.json``: an FAQ set (``tests/data/faq/``): ``entries`` (``id``, ``question``, ``similar``, optional
  ``answer``) and ``queries`` (``text``, ``expect``: an entry id or null). The set carries its own FAQ.

:func:`read_faq` reads the FAQ to match against: an FAQ set's ``entries`` (``.json`` object), a ``KEFU_FAQ``-style
list (``.json`` array), or an FAQ sheet (``.csv``/``.xlsx``, as ``kefu kb import`` reads it).

Every :class:`DatasetError` names the file and, where there is one, the line (or the JSON item) and the field:
``data.jsonl:7: handoff: 'maybe' is not one of request, unclear, not``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.evaluation.metrics import HANDOFF_LABELS
from models.knowledge.faq import FaqEntry

JSONL_FIELDS = ("text", "expected_faq", "intent", "handoff", "id", "source", "note")


class DatasetError(ValueError):
    """A labelled set or FAQ file that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class TsvLine:
    source: str
    ident: str
    label: str
    text: str
    line: int


@dataclass(frozen=True, slots=True)
class Case:
    """One labelled message; a label left out is None (``faq_labelled`` tells "no FAQ label" from "abstain")."""

    text: str
    where: str  # "file:line" or "file: queries[3]"
    expected_faq: str | None = None
    faq_labelled: bool = False
    intent: str | None = None
    handoff: str | None = None


@dataclass(frozen=True, slots=True)
class LabelledSet:
    path: Path
    cases: tuple[Case, ...]
    faq: tuple[FaqEntry, ...] | None = None  # the FAQ the set carries (an FAQ set), else None


def read(path: Path) -> LabelledSet:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return LabelledSet(path, _jsonl(path, _text(path)))
    if suffix == ".tsv":
        return LabelledSet(path, _tsv_cases(path))
    if suffix == ".json":
        entries, cases = read_faq_set(path)
        return LabelledSet(path, cases, entries)
    raise DatasetError(f"{path}: unknown dataset format {suffix or '(no suffix)'!r}: use .jsonl, .tsv (hand-off or "
                       "intent labels) or .json (an FAQ set)")


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None


def read_tsv(path: Path) -> list[TsvLine]:
    """The lines of a ``source<TAB>id<TAB>label<TAB>text`` file (labels unchecked here)."""
    found = []
    for number, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t", 3)
        if len(cells) < 4:
            raise DatasetError(f"{path}:{number}: expected source<TAB>id<TAB>label<TAB>text, got {len(cells)} "
                               f"field{'s' if len(cells) > 1 else ''}")
        source, ident, label, text = cells
        if not label.strip():
            raise DatasetError(f"{path}:{number}: label: empty")
        if not text.strip():
            raise DatasetError(f"{path}:{number}: text: empty")
        found.append(TsvLine(source, ident, label.strip(), text, number))
    return found


def read_handoff_tsv(path: Path) -> list[TsvLine]:
    """A hand-off TSV: every label must be ``request``, ``unclear`` or ``not``."""
    lines = read_tsv(path)
    for line in lines:
        if line.label not in HANDOFF_LABELS:
            raise DatasetError(f"{path}:{line.line}: label: {line.label!r} is not one of {', '.join(HANDOFF_LABELS)}")
    return lines


def _tsv_cases(path: Path) -> tuple[Case, ...]:
    lines = read_tsv(path)
    handoff = all(line.label in HANDOFF_LABELS for line in lines)
    return tuple(Case(line.text, f"{path}:{line.line}", handoff=line.label if handoff else None,
                      intent=None if handoff else line.label) for line in lines)


def _jsonl(path: Path, text: str) -> tuple[Case, ...]:
    cases = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(item, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(item).__name__}")
        cases.append(_case(item, where))
    if not cases:
        raise DatasetError(f"{path}: no labelled lines")
    return tuple(cases)


def _case(item: Mapping[str, Any], where: str) -> Case:
    unknown = sorted(set(item) - set(JSONL_FIELDS))
    if unknown:
        raise DatasetError(f"{where}: {unknown[0]}: unknown field (fields: {', '.join(JSONL_FIELDS)})")
    text = item.get("text")
    if text is None:
        raise DatasetError(f"{where}: text: missing")
    faq_labelled = "expected_faq" in item
    expected = _optional_string(item, "expected_faq", where, "must be an entry's id or question, or null (abstain)")
    intent = _optional_string(item, "intent", where, "must be a non-empty string")
    handoff = item.get("handoff")
    if handoff is not None and handoff not in HANDOFF_LABELS:
        raise DatasetError(f"{where}: handoff: {handoff!r} is not one of {', '.join(HANDOFF_LABELS)}")
    if not faq_labelled and intent is None and handoff is None:
        raise DatasetError(f"{where}: no label: give expected_faq, intent or handoff")
    return Case(_optional_string(item, "text", where, "must be a non-empty string") or "", where, expected,
                faq_labelled, intent, handoff)


def _optional_string(item: Mapping[str, Any], name: str, where: str, problem: str) -> str | None:
    """The field stripped, None when it is absent or null; DatasetError when it is not a non-blank string."""
    value = item.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: {name}: {problem}")
    return value.strip()


def _json(path: Path) -> Any:
    try:
        return json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None


def read_faq_set(path: Path) -> tuple[tuple[FaqEntry, ...], tuple[Case, ...]]:
    """An FAQ set's entries and its queries (each expects an entry id, or null: abstain)."""
    data = _json(path)
    if not isinstance(data, dict) or not isinstance(data.get("queries"), list):
        raise DatasetError(f"{path}: queries: an FAQ set is an object with 'entries' and 'queries' lists")
    entries = _set_entries(path, data)
    ids = {e.id for e in entries}
    cases = []
    for at, query in enumerate(data["queries"]):
        where = f"{path}: queries[{at}]"
        if not isinstance(query, dict) or not isinstance(query.get("text"), str) or not query["text"].strip():
            raise DatasetError(f"{where}.text: must be a non-empty string")
        expect = query.get("expect")
        if expect is not None and expect not in ids:
            raise DatasetError(f"{where}.expect: {expect!r} is no entry id of the set")
        cases.append(Case(query["text"], where, expect, True))
    return entries, tuple(cases)


def _set_entries(path: Path, data: Mapping[str, Any]) -> tuple[FaqEntry, ...]:
    if not isinstance(data.get("entries"), list):
        raise DatasetError(f"{path}: entries: must be a list of {{id, question, similar, answer}}")
    entries = []
    for at, e in enumerate(data["entries"]):
        where = f"{path}: entries[{at}]"
        if not isinstance(e, dict):
            raise DatasetError(f"{where}: must be an object")
        for field in ("id", "question"):
            if not isinstance(e.get(field), str) or not e[field].strip():
                raise DatasetError(f"{where}.{field}: must be a non-empty string")
        similar = e.get("similar", [])
        if not isinstance(similar, list) or not all(isinstance(s, str) for s in similar):
            raise DatasetError(f"{where}.similar: must be a list of strings")
        answer = e.get("answer", f"答案 {e['id']}")
        if not isinstance(answer, str):
            raise DatasetError(f"{where}.answer: must be a string")
        entries.append(FaqEntry(e["id"], e["question"].strip(), answer, tuple(similar)))
    return tuple(entries)


def read_faq(path: Path) -> tuple[FaqEntry, ...]:
    """The FAQ in ``path``: an FAQ set's entries, a ``KEFU_FAQ``-style JSON list, or a CSV/XLSX FAQ sheet."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = _json(path)
        return _settings_list(path, data) if isinstance(data, list) else _set_entries(path, data)
    from models.knowledge import faq_sheet, readers
    from models.knowledge.documents import UnreadableDocument

    if suffix not in faq_sheet.SUPPORTED:
        raise DatasetError(f"{path}: an FAQ file is .json (an FAQ set or a KEFU_FAQ list), "
                           f"{' or '.join(faq_sheet.SUPPORTED)} (an FAQ sheet)")
    try:
        parsed = readers.read(path)
    except UnreadableDocument as exc:
        raise DatasetError(str(exc)) from None
    return tuple(FaqEntry(f"{path.name}:{n}", row.question, row.answer, row.similar)
                 for n, row in enumerate(parsed.faq, 1))


def _settings_list(path: Path, data: list[Any]) -> tuple[FaqEntry, ...]:
    from models.knowledge.faq_cache import from_settings
    from models.settings import FaqEntry as SettingsFaqEntry

    parsed = []
    for at, item in enumerate(data):
        try:
            parsed.append(SettingsFaqEntry.model_validate(item))
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "entry"
            raise DatasetError(f"{path}: [{at}].{field}: {error['msg']}") from None
    return tuple(FaqEntry(f"{path.name}:{e.id.removeprefix('settings:')}", e.question, e.answer, e.similar,
                          e.keywords) for e in from_settings(parsed))

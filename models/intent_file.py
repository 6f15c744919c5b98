"""The intent labels and the operator's intents file (``KEFU_INTENTS_FILE``), read and checked.

Pure apart from reading the file, and independent of the rest of Kefu's settings, so that
:meth:`models.settings.Settings.check_reliability` can check the file and ``KEFU_INTENT_ROUTES`` at start-up
(:mod:`models.intents` classifies with them). The file is JSON, or YAML when its name ends in ``.yaml`` or
``.yml`` (PyYAML's safe loader: plain data, no tags). :func:`read_intents_file` and :func:`check_routes` raise
:class:`IntentFileError` (a ``ValueError``) naming the variable, the entry and the field (for a file that does not
parse, the line); the settings turn it into a ``ConfigError``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from models.handoff_detect import normalized

ORDER_STATUS = "order_status"
SHIPPING = "shipping"
RETURN_REFUND = "return_refund"
EXCHANGE = "exchange"
INVOICE = "invoice"
PAYMENT = "payment"
ACCOUNT = "account"
COMPLAINT = "complaint"
ASK_FOR_PERSON = "ask_for_person"
GREETING = "greeting"
OUT_OF_SCOPE = "out_of_scope"
LABELS: tuple[str, ...] = (COMPLAINT, RETURN_REFUND, EXCHANGE, INVOICE, SHIPPING, ORDER_STATUS, ACCOUNT, PAYMENT,
                           GREETING, ASK_FOR_PERSON, OUT_OF_SCOPE)  # the built-in ones, in the order rules are tried
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # fits inbound.intent (String(32)) and a GBNF literal as it is
YAML_SUFFIXES = (".yaml", ".yml")


class IntentFileError(ValueError):
    """The intents file or an intent route cannot be used; the message names the variable to fix."""


@dataclass(frozen=True, slots=True)
class Intent:
    name: str
    description: str  # told to the model, in Chinese
    examples: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()  # the operator's: plain words, one occurring is enough
    patterns: str = ""  # the built-in rules: one regular expression over the normalized text


def read_intents_file(path: Path) -> tuple[Intent, ...]:
    """The operator's intents: a JSON (or YAML: ``.yaml``, ``.yml``) list of ``{"name", "description", "examples",
    "keywords"}`` (examples and keywords normalized like a customer's text)."""
    where = f"KEFU_INTENTS_FILE={path}"
    kind = "YAML" if path.suffix.lower() in YAML_SUFFIXES else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise IntentFileError(f"{where}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise IntentFileError(f"{where}: the file is not UTF-8 text") from None
    data = _parsed_yaml(text, where) if kind == "YAML" else _parsed_json(text, where)
    if not isinstance(data, list):
        raise IntentFileError(f'{where}: expected a {kind} list of {{"name", "description", "examples", '
                              '"keywords"}')
    return tuple(_intent(entry, f"{where}: entry {n}") for n, entry in enumerate(data))


def _parsed_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise IntentFileError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _parsed_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:  # a syntax error: what and where (PyYAML counts lines from 0)
        mark = exc.problem_mark or exc.context_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise IntentFileError(f"{where}: not valid YAML ({exc.problem or exc.context or 'unreadable'}{line})") from None
    except yaml.YAMLError as exc:
        raise IntentFileError(f"{where}: not valid YAML ({type(exc).__name__})") from None


def _intent(entry: Any, where: str) -> Intent:
    if not isinstance(entry, dict):
        raise IntentFileError(f"{where}: expected an object with name, description, examples, keywords")
    unknown = set(entry) - {"name", "description", "examples", "keywords"}
    if unknown:
        raise IntentFileError(f"{where}: unknown field {sorted(unknown)[0]!r} (fields: name, description, examples, "
                              "keywords)")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise IntentFileError(f"{where}: name must be lower-case letters, digits and _ (at most 32, starting with a "
                              f"letter), e.g. \"warranty\" (got {name!r})")
    if name in (ASK_FOR_PERSON, OUT_OF_SCOPE):
        raise IntentFileError(f"{where}: {name} is decided by Kefu itself (words for a person go in "
                              "KEFU_HANDOFF_KEYWORDS)")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise IntentFileError(f"{where} ({name}): description must be a string")
    lists = {}
    for field in ("examples", "keywords"):
        value = entry.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise IntentFileError(f"{where} ({name}): {field} must be a list of non-empty strings")
        lists[field] = tuple(normalized(v) for v in value)
    if not lists["examples"] and not lists["keywords"]:
        raise IntentFileError(f"{where} ({name}): give examples (sentences customers write) or keywords, or both")
    return Intent(name, description.strip(), lists["examples"], lists["keywords"])


def check_routes(routes: Mapping[str, str], custom: Iterable[Intent] = ()) -> None:
    """A ``KEFU_INTENT_ROUTES`` label that neither a built-in intent nor one of ``custom`` has is an error: a typo
    would never route."""
    labels = tuple(dict.fromkeys((*(i.name for i in custom), *LABELS)))
    for label in routes:
        if label not in labels:
            raise IntentFileError(f"KEFU_INTENT_ROUTES: no intent is called {label!r} (known: {', '.join(labels)})")

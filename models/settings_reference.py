"""The reference of every ``KEFU_*`` setting, as Markdown (docs/settings.md), made from the settings classes.

:func:`render` reads :class:`~models.settings.Settings` and the channels' :class:`~models.settings.Section`
classes it is given: each field's variable, type (with its bounds), default and description. The description is
the field's ``Field(description=...)`` when it has one, else the comment written beside it in the source (on its
line, or the comment lines right above it); the ``# --- name ---`` lines of a class become the page's headings.
So the page follows the code, and a test (tests/unit/test_settings_reference.py) fails while the committed page is
out of date. ``kefu config --reference`` prints it (the command gives the channels' sections: this module imports
no channel). Pure: reads source files, raises nothing for a field it cannot describe (its description is empty).
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from models.settings import Settings

COMMAND = "kefu config --reference > docs/settings.md"
_HEADING = re.compile(r"#\s*-{2,}\s*(.+?)\s*-{2,}\s*$")
_MAX_DEFAULT = 60


@dataclass(frozen=True)
class Entry:
    variable: str
    type: str
    default: str
    description: str


def type_name(annotation: Any) -> str:
    """A short, readable type: ``int``, ``text | json``, ``list[str]``, ``secret``, ``path``, ``str | unset``."""
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(str(arg) for arg in get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [type_name(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " \\| ".join(parts) + (" \\| unset" if type(None) in get_args(annotation) else "")
    if origin in (list, tuple, set, frozenset, dict):
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in get_args(annotation) if arg is not ...)}]"
    if get_origin(annotation) is not None and hasattr(annotation, "__metadata__"):  # Annotated inside a container
        return type_name(get_args(annotation)[0])
    if annotation is SecretStr:
        return "secret"
    if annotation is Path:
        return "path"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def bounds(field: FieldInfo) -> str:
    marks = {Gt: ">", Ge: "≥", Lt: "<", Le: "≤", MinLen: "length ≥", MaxLen: "length ≤"}
    found = []
    for meta in field.metadata:
        for kind, mark in marks.items():
            if isinstance(meta, kind):
                value = getattr(meta, {Gt: "gt", Ge: "ge", Lt: "lt", Le: "le", MinLen: "min_length",
                                       MaxLen: "max_length"}[kind])
                found.append(f"{mark} {value}")
    return f" ({', '.join(found)})" if found else ""


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Path):
        text = str(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    if text == "":
        return '""'
    if len(text) > _MAX_DEFAULT:
        text = text[:_MAX_DEFAULT] + "…"
    return f"`{text}`"


def comments(cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """From ``cls``'s source: each field's comment, and the heading each field falls under."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}, {}
    lines = source.splitlines()
    by_line: dict[int, str] = {}  # 1-based line -> comment text on it
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            by_line[token.start[0]] = token.string
    klass = ast.parse(source).body[0]
    assert isinstance(klass, ast.ClassDef)
    described: dict[str, str] = {}
    headings: dict[str, str] = {}
    heading = ""
    last_end = klass.lineno
    for node in klass.body:
        for number in range(last_end + 1, node.lineno):
            if (found := _HEADING.match(by_line.get(number, "").strip())) is not None:
                heading = found.group(1)
        last_end = node.end_lineno or node.lineno
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        headings[node.target.id] = heading
        described[node.target.id] = _comment_of(node, lines, by_line)
    return described, headings


def _comment_of(node: ast.stmt, lines: list[str], by_line: dict[int, str]) -> str:
    """The comment lines right above ``node`` (not a heading) and the comment on its own line(s), as one text."""
    beside = [by_line[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
              if n in by_line and not lines[n - 1].lstrip().startswith("#")]
    above: list[str] = []
    number = node.lineno - 1
    while number in by_line and lines[number - 1].lstrip().startswith("#") and not _HEADING.match(
            lines[number - 1].strip()):
        above.insert(0, by_line[number])
        number -= 1
    text = " ".join(part.lstrip("#").strip() for part in [*above, *beside])
    return re.sub(r"\s+", " ", text).strip()


def entries(cls: type[BaseModel]) -> list[tuple[str, Entry]]:
    """(heading, entry) for each field of ``cls`` in source order."""
    described, headings = comments(cls)
    found = []
    for name, field in cls.model_fields.items():
        if name.startswith("_"):
            continue
        description = field.description or described.get(name, "")
        found.append((headings.get(name, ""), Entry(f"KEFU_{name.upper()}", type_name(field.annotation) + bounds(field),
                                                     default_text(field), description)))
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") if "\\|" not in text else text.replace("\n", " ")


def _table(rows: list[Entry]) -> list[str]:
    out = ["| variable | type | default | description |", "|---|---|---|---|"]
    out += [f"| `{row.variable}` | {row.type} | {_cell(row.default)} | {_cell(row.description)} |" for row in rows]
    return out


def render(sections: Sequence[tuple[str, type[BaseModel]]] = ()) -> str:
    """The whole page: Settings by heading, then one table per channel section (``(channel name, section class)``)."""
    out = [
        "# Settings reference",
        "",
        f"Generated from `models/settings.py` and the channels' settings sections by `{COMMAND}`; do not edit by",
        "hand (tests/unit/test_settings_reference.py fails while this page is out of date). Every setting is an",
        "environment variable (or a line of `.env`); `KEFU_<NAME>_FILE=/path` reads `KEFU_<NAME>` from a file instead",
        "(Docker and Kubernetes secrets). Lists and objects are JSON. `kefu config` prints the effective values,",
        "secrets masked.",
    ]
    groups: dict[str, list[Entry]] = {}
    for heading, entry in entries(Settings):
        groups.setdefault(heading or "general", []).append(entry)
    for heading, rows in groups.items():
        out += ["", f"## {heading[:1].upper()}{heading[1:]}", "", *_table(rows)]
    for channel, section in sections:
        rows = [entry for _, entry in entries(section)]
        if rows:
            out += ["", f"## Channel `{channel}` ({section.__module__}.{section.__name__})", "", *_table(rows)]
    return "\n".join(out) + "\n"

"""The docs say what the code does: the README's Layout section names every module and package of models/,
channels/ and workers/ (their own modules' contents are for their docstrings), and the defaults in the settings
tables of README.md and docs/reliability.md are those of models/settings.py, and the README names every audit
event kind of models/audit.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def layout() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```", readme.index("\n## Layout\n")) + 3
    return readme[start:readme.index("```", start)]


def test_the_readme_layout_names_every_top_level_module() -> None:
    block = " ".join(layout().split())  # a name may be written with spaces ("embedded broker"), plural, in capitals
    missing = []
    for package in ("models", "channels", "workers"):
        for path in sorted((ROOT / package).iterdir()):
            if path.suffix == ".py" and path.stem != "__init__":
                name = path.stem
            elif path.is_dir() and (path / "__init__.py").is_file():
                name = f"{path.name}/"
            else:
                continue
            said = (re.escape(name), re.escape(name.replace("_", " ")))
            if not any(re.search(rf"(?<!\w){way}s?(?!\w)", block, re.I) for way in said):
                missing.append(f"{package}/{name}")
    assert missing == [], "modules the README's Layout section does not name"


def test_the_readme_names_every_audit_event_kind() -> None:
    from models import audit

    readme = (ROOT / "README.md").read_text()
    said = readme[readme.index("Audit events: "):readme.index("\n## ", readme.index("Audit events: "))]
    kinds = [value for name, value in vars(audit).items() if name.isupper() and isinstance(value, str)
             and re.fullmatch(r"[a-z_]+", value)]
    assert "kb_used" in kinds
    assert [kind for kind in kinds if f"`{kind}`" not in said] == []


# --- defaults in the docs' settings tables -------------------------------------------------------------------------

_NONE = {"none", "—", "-", "unset"}


def settings_rows(path: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """Each table row whose first cell names KEFU_* settings: (where, the names, the default cell split like them)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        names = re.findall(r"`(KEFU_[A-Z0-9_]+)`", cells[0]) if line.startswith("| `KEFU_") else []
        if names and len(cells) >= 2:
            values = [v.strip().strip("`") for v in re.split(r" / |, ", cells[1])]
            yield f"{path.relative_to(ROOT)}:{number}", names, values * len(names) if len(values) == 1 else values


def documented(value: str, default: Any) -> bool | None:
    """Whether a table's ``value`` says ``default``; None where the cell is words ("all cores", "an apology")."""
    if value.lower() in _NONE:
        return default is None or default == [] or default == {}
    if value in ("true", "false"):
        return default is (value == "true")
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return isinstance(default, int | float) and not isinstance(default, bool) and float(value) == default
    if re.fullmatch(r"[a-z_]+", value) and isinstance(default, str):
        return value == default
    return None


@pytest.mark.parametrize("doc", ["README.md", "docs/reliability.md"])
def test_the_defaults_in_the_settings_tables_are_the_codes(doc: str) -> None:
    fields = Settings.model_fields
    wrong, checked = [], 0
    for where, names, values in settings_rows(ROOT / doc):
        assert all(name.removeprefix("KEFU_").lower() in fields for name in names), f"{where}: not a setting"
        if len(values) != len(names):
            continue
        for name, value in zip(names, values, strict=True):
            default = fields[name.removeprefix("KEFU_").lower()].get_default(call_default_factory=True)
            said = documented(value, default)
            checked += said is not None
            if said is False:
                wrong.append(f"{where}: {name} says {value!r}, the code {default!r}")
    assert wrong == []
    assert checked >= 5  # the tables were found and read

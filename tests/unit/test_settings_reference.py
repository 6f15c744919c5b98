"""docs/settings.md is the settings reference generated from the code (`kefu config --reference`), kept current."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from models.settings import Section, Settings
from models.settings_reference import COMMAND, comments, entries, render
from workers import cli

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "settings.md"


def test_the_committed_page_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == cli.settings_reference(), (
        f"docs/settings.md is out of date: regenerate it with `{COMMAND}` and commit it")


def test_every_setting_and_every_channel_section_is_on_the_page() -> None:
    from channels import registry

    page = cli.settings_reference()
    for name in Settings.model_fields:
        assert f"| `KEFU_{name.upper()}` |" in page
    sections = [found.section for found in registry.channels() if found.section is not None]
    assert sections, "no channel declares a section: the page would miss their variables silently"
    for section in sections:
        for name in section.model_fields:
            assert f"| `KEFU_{name.upper()}` |" in page


class Sample(Section):
    # --- first part ---
    plain: int = 3  # the comment beside it
    # a comment above it,
    # on two lines
    above: Literal["a", "b"] = "a"
    described: float = Field(default=0.5, gt=0, description="from Field")
    # --- second part ---
    bare: list[str] = Field(default_factory=list)
    maybe: str | None = None


def test_descriptions_come_from_field_or_comments_and_headings_group_them() -> None:
    described, headings = comments(Sample)
    assert described["plain"] == "the comment beside it"
    assert described["above"] == "a comment above it, on two lines"
    assert headings == {"plain": "first part", "above": "first part", "described": "first part",
                        "bare": "second part", "maybe": "second part"}
    rows = {entry.variable: entry for _, entry in entries(Sample)}
    assert rows["KEFU_DESCRIBED"].description == "from Field" and rows["KEFU_DESCRIBED"].type == "float (> 0)"
    assert rows["KEFU_ABOVE"].type == "a \\| b" and rows["KEFU_ABOVE"].default == "`a`"
    assert rows["KEFU_BARE"].default == "`[]`" and rows["KEFU_BARE"].description == ""
    assert rows["KEFU_MAYBE"].type == "str \\| unset" and rows["KEFU_MAYBE"].default == "unset"
    assert "## Channel `sample`" in render([("sample", Sample)])

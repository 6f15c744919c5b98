"""The README's Layout section names every module and package of models/, channels/ and workers/ (their own
modules' contents are for their docstrings), so a new module cannot land without a line there."""

from __future__ import annotations

import re
from pathlib import Path

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

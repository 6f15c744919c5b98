"""Dependencies point one way (channels → models ← workers), and our packages are the ones imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import channels
import models

REPO = Path(__file__).resolve().parents[2]

FORBIDDEN = {
    "channels": {"workers", "llama_cpp"},
    "models": {"channels", "workers", "llama_cpp"},
}


def imported_top_levels(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file (relative imports stay inside the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_imported_top_levels_sees_every_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, workers.tasks as t\n"
        "from llama_cpp import Llama\n"
        "from . import sibling\n"
        "def f():\n"
        "    import importlib\n"
        "    importlib.import_module('channels.web')\n"
        "    __import__('json')\n"
    )
    assert imported_top_levels(sample) == {"os", "workers", "llama_cpp", "importlib", "channels", "json"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_upwards(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    offenders = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in files
        for name in imported_top_levels(path) & FORBIDDEN[package]
    }
    assert not offenders, "\n".join(sorted(offenders))


@pytest.mark.parametrize("module", [channels, models], ids=["channels", "models"])
def test_our_packages_are_not_shadowed(module: object) -> None:
    # Django Channels is also imported as `channels`, and `models` is a generic name.
    file = getattr(module, "__file__", None)
    assert file is not None, f"{module!r} is a namespace package, not ours"
    name = getattr(module, "__name__", "")
    assert Path(file).resolve() == REPO / name / "__init__.py", f"{name} resolves to {file}, outside {REPO}"

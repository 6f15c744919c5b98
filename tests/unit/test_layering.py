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



PACKAGES = ("models", "channels", "workers")


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str], root: Path = REPO) -> set[str]:
    """Our modules a file imports, at any depth of the file (lazy imports and TYPE_CHECKING ones included: a cycle
    hidden behind either still ties the modules together); relative imports resolved."""
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {name for name in found if name in known} - {own}


def cycles_in(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_no_import_cycles() -> None:
    files = {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    graph = {name: imported_modules(path, set(files)) for name, path in files.items()}
    cycles = cycles_in(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycles_are_found_through_every_import_form(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from .c import x\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")
    (tmp_path / "pkg" / "d.py").write_text("from pkg.a import y\n")
    files = {module_name(p, tmp_path): p for p in (tmp_path / "pkg").glob("*.py")}
    graph = {name: imported_modules(path, set(files), tmp_path) for name, path in files.items()}
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles_in(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


MAX_COMPLEXITY = 15


def test_no_function_in_the_product_is_over_complexity_15() -> None:
    """Cyclomatic complexity as radon counts it (boolean operators and comprehension conditions included, so
    stricter than ruff's mccabe, which the lint also enforces)."""
    from radon.complexity import cc_visit

    offenders = [
        f"{path.relative_to(REPO)}:{block.lineno} {block.name} ({block.complexity})"
        for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
        for block in cc_visit(path.read_text(encoding="utf-8"))
        if block.complexity > MAX_COMPLEXITY
    ]
    assert not offenders, "split these:\n" + "\n".join(offenders)

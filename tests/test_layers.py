"""Import layers (architecture.md): core at the bottom, operators and catalog above it, pipelines above those, the
CLI on top. Every import statement is read, also those inside functions, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"core", "catalog", "operators", "pipelines", "training", "lake"}
# package -> the packages of ours it may import (itself always)
ALLOWED = {
    "core": set(),
    "operators": {"core"},
    "catalog": {"core"},
    "pipelines": {"core", "catalog", "operators"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every absolute import in a module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_layer_imports_nothing_above_it(package):
    offending = {}
    for path in sorted((REPO / package).rglob("*.py")):
        above = (imported_packages(path) & OURS) - ALLOWED[package] - {package}
        if above:
            offending[str(path.relative_to(REPO))] = sorted(above)
    assert not offending, f"{package}/ imports layers above it: {offending}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from lake.cli import main\n    import training.model\n")
    assert imported_packages(module) == {"os", "lake", "training"}

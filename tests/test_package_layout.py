"""The package's shape: small modules, each with one job, and the import walls the design relies on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "grpo_helpers"
MODULES = sorted(PACKAGE.glob("*.py"))
MAX_LINES = 400


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, column) for every import in a module: column 0 is the top level."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found += [(base + a.name if node.module is None else base, node.col_offset) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.col_offset) for a in node.names]
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_rewards_reach_neither_model_building_nor_the_trainer():
    imported = {name for name, _ in _imports(PACKAGE / "rewards.py")}
    assert not {n for n in imported if n.endswith("tiny") or n.startswith(("trl", "transformers", "torch"))}


# Sibling imports inside a function, each with its reason; every other one stands at the top.
LAZY_SIBLINGS_ALLOWED = {
    ("sizes.py", ".modeling"): "a cycle: modeling imports tiny, which builds the 8B-shaped model from sizes",
    ("tiny.py", ".sizes"): "the same cycle, from the other end",
    ("cli.py", ".commands"): "Unsloth first: cli.main imports Unsloth for its backend before commands imports "
                             "transformers and TRL, which Unsloth patches",
}


def _type_checking_lines(path: Path) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            lines |= set(range(node.lineno, node.end_lineno + 1))
    return lines


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_sibling_modules_are_imported_at_the_top(path):
    typing_only = _type_checking_lines(path)
    lazy = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level and node.col_offset > 0 and node.lineno not in typing_only:
            names = [f".{node.module}"] if node.module else [f".{a.name}" for a in node.names]
            lazy += [n for n in names if (path.name, n) not in LAZY_SIBLINGS_ALLOWED]
    assert not lazy, f"{path.name} imports {lazy} inside a function"


def test_every_module_is_named_in_the_readme_layout_and_the_package_docstring():
    import re

    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("grpo_helpers/  the small package"):readme.index("configs/ ")]
    docstring = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    for path in MODULES:
        if path.stem != "__init__":
            name = re.escape(path.stem)
            assert re.search(rf"\b{name}\b", layout), f"README's Layout does not name {path.stem}"
            assert re.search(rf"\b{name}\b", docstring), f"grpo_helpers/__init__.py does not name {path.stem}"

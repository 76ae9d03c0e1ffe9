"""The package layering, asserted: which part of samadapt may import which.

A *package* is a subpackage of ``src/samadapt`` (``models``, ``training``...) or a module directly in it
(``errors``, ``runtime``, ``cli``...). Its imports of other packages are read with ``ast`` from every file:
module-level, inside functions (lazy), under ``TYPE_CHECKING``, ``from samadapt import x`` and
``importlib.import_module("samadapt.x...")`` alike, since each is a dependency. :data:`MAY_IMPORT` is the
layering (docs/architecture.md prints the same table, checked here): it is acyclic, every package has a row,
and every import follows it, so a new import cycle between packages fails here.
"""

from __future__ import annotations

import ast
import graphlib
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "samadapt"
DOC = ROOT / "docs" / "architecture.md"

FOUNDATION = {"errors", "progress", "runtime", "overlap", "io", "settings", "prompts"}

# package -> the packages it may import (bottom to top; a package's row names only rows above it)
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "progress": set(),
    "overlap": set(),
    "runtime": {"errors"},
    "io": {"errors"},
    "settings": {"errors", "io"},
    "prompts": {"settings"},
    "data": {"errors", "io", "progress", "settings"},
    "models": {"errors", "io", "progress", "prompts", "runtime"},
    "evaluation": {"data", "errors", "io", "models", "overlap", "progress", "prompts", "runtime", "settings"},
    "training": {"data", "errors", "evaluation", "io", "models", "overlap", "prompts", "runtime", "settings"},
    "config": {"data", "errors", "evaluation", "prompts", "settings", "training"},
    "pretraining": {"config", "data", "errors", "io", "models", "prompts", "runtime", "training"},
    "promise": {"config", "data", "errors", "evaluation", "io", "models", "overlap", "progress", "prompts",
                "runtime", "settings", "training"},
    "export": {"errors", "io", "models", "promise"},
    "inference": {"config", "data", "errors", "export", "io", "models", "overlap", "progress", "promise", "prompts",
                  "runtime", "settings"},
    "serve": {"data", "errors", "inference", "io", "models"},
    "demo": {"config", "data", "errors", "evaluation", "models", "progress", "promise", "runtime", "training"},
    "cli": {"config", "data", "demo", "errors", "evaluation", "export", "inference", "io", "models", "pretraining",
            "promise", "runtime", "serve", "settings", "training"},
    "__main__": {"cli"},
}


def _node(relative: Path) -> str:
    """The package of a file under src/samadapt (``models/sam.py`` -> ``models``, ``cli.py`` -> ``cli``)."""
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imported(tree: ast.AST, relative: Path) -> Iterable[tuple[str, int]]:
    """``(dotted module, line)`` of every samadapt import in ``tree`` (a file at ``relative``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's own package
                base = ["samadapt", *relative.parts[:-1]][: len(relative.parts) + 1 - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "samadapt" or not node.module:  # from samadapt import cli / from . import x
                yield from ((f"{module}.{alias.name}", node.lineno) for alias in node.names)
            else:
                yield module, node.lineno
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            yield node.args[0].value, node.lineno


def package_imports(root: Path) -> dict[tuple[str, str], list[str]]:
    """``{(package, imported package): ["file:line", ...]}`` for the package tree at ``root``."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative == Path("__init__.py"):
            continue
        source = _node(relative)
        for module, line in _imported(ast.parse(path.read_text(encoding="utf-8")), relative):
            parts = module.split(".")
            if parts[0] == "samadapt" and len(parts) > 1 and parts[1] != source:
                edges.setdefault((source, parts[1]), []).append(f"{relative.as_posix()}:{line}")
    return edges


def packages(root: Path) -> set[str]:
    return {_node(p.relative_to(root)) for p in root.rglob("*.py") if p.relative_to(root) != Path("__init__.py")}


EDGES = package_imports(PACKAGE)


def test_the_table_is_acyclic_and_names_known_packages():
    order = list(graphlib.TopologicalSorter(MAY_IMPORT).static_order())  # CycleError on a cycle
    assert set(order) == set(MAY_IMPORT), f"rows name packages without a row: {set(order) - set(MAY_IMPORT)}"
    for name in FOUNDATION:
        assert MAY_IMPORT[name] <= FOUNDATION, f"foundation {name} imports above the foundations"


def test_every_package_has_a_row():
    assert packages(PACKAGE) == set(MAY_IMPORT), (
        f"packages without a row (place them in MAY_IMPORT and docs/architecture.md): "
        f"{sorted(packages(PACKAGE) - set(MAY_IMPORT))}; rows without a package: "
        f"{sorted(set(MAY_IMPORT) - packages(PACKAGE))}")


def test_imports_follow_the_layering():
    against = {edge: where for edge, where in EDGES.items()
               if edge[1] not in MAY_IMPORT.get(edge[0], set())}
    listing = "\n".join(f"  {a} -> {b}: {', '.join(where)}" for (a, b), where in sorted(against.items()))
    assert not against, f"imports against the layering (MAY_IMPORT, docs/architecture.md):\n{listing}"


def test_the_doc_prints_the_same_table():
    text = DOC.read_text(encoding="utf-8")
    rows = {m.group(1): set(re.findall(r"`(\w+)`", m.group(2)))
            for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", text, flags=re.MULTILINE)}
    assert rows == MAY_IMPORT


def test_the_reader_sees_every_form_of_import(tmp_path):
    """The checker itself: lazy, relative, ``from samadapt import``, importlib and TYPE_CHECKING imports all
    count, and an import cycle between two packages shows as two edges."""
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    (tmp_path / "low" / "a.py").write_text("def f():\n    from samadapt.high.b import g\n")
    (tmp_path / "low" / "c.py").write_text("from ..high import b\nfrom . import a\n")
    (tmp_path / "high" / "b.py").write_text(
        "import importlib\nfrom typing import TYPE_CHECKING\nfrom samadapt import low\n"
        "if TYPE_CHECKING:\n    import samadapt.tool\nimportlib.import_module('samadapt.low.a')\n")
    (tmp_path / "tool.py").write_text("import os\n")
    edges = package_imports(tmp_path)
    assert edges == {("low", "high"): ["low/a.py:2", "low/c.py:1"],
                     ("high", "low"): ["high/b.py:3", "high/b.py:6"], ("high", "tool"): ["high/b.py:5"]}
    assert packages(tmp_path) == {"low", "high", "tool"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter({a: {b for (s, b) in edges if s == a} for a, _ in edges}).static_order())

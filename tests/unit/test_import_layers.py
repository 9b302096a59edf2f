"""Imports point down only: no circle of imports inside mpltools/, and `config` stands on the standard library.

The rule is /work/shared/tools/import-circles's (DESIGN §4): every import of a package module counts, at module
level or inside a function (a lazy import still ties the two modules together); a circle is a strongly connected
group of modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import mpltools

ROOT = Path(mpltools.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = f
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its file)."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
                    base = ".".join(here[: len(here) - (node.level - 1)] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t) if t.split(".")[0] == "mpltools" else None
                if r and r != m and not m.startswith(r + ".") and r != "mpltools":
                    edges[m].add(r)
    return edges


def circles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(frozenset(group))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        for v in edges:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_the_circle_finder_finds_a_lazy_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [frozenset({"a", "b", "c"})]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
    found = circles(_imports(_modules()))
    assert [sorted(c) for c in found] == []


def test_the_training_modules_import_downward():
    """config -> preflight -> trainer -> methods -> config was a 10-module circle; each of these stays below its users."""
    edges = _imports(_modules())
    assert "mpltools.preflight" not in edges["mpltools.config"]
    assert not edges["mpltools.methods.common"] & {"mpltools.trainer", "mpltools.preflight", "mpltools.runtime"}
    assert "mpltools.methods.common" not in edges["mpltools.runtime"]
    assert {"mpltools.trainer", "mpltools.networks"}.isdisjoint(edges["mpltools.preflight"])


@pytest.mark.parametrize(
    "module, allowed",
    [
        ("config.py", {"mpltools.errors", "mpltools.recipe_ranges"}),
        ("recipe_ranges.py", set()),
        ("recipe_files.py", {"mpltools.errors"}),
    ],
)
def test_config_imports_only_the_standard_library_and_errors(module, allowed):
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module)
    ours = {n for n in names if n.split(".")[0] == "mpltools"}
    assert ours == allowed, ours
    foreign = {n for n in names - ours if n.split(".")[0] not in sys.stdlib_module_names and n != "__future__"}
    assert foreign == set(), foreign

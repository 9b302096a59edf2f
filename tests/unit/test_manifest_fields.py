"""`data/format.py` is the one module that knows manifest.json's field names (its docstring says so): every other
module reads a manifest through `ManifestFields` (`ShardSet`, `Manifest(dict)`), so a renamed field is one edit."""

from __future__ import annotations

import ast
from pathlib import Path

import mpltools
from mpltools.data.format import Manifest, ShardEntry, build_manifest, scanned_manifest, shard_entry

ROOT = Path(mpltools.__file__).parent
FIELDS = {
    "format_version",
    "num_samples",
    "labeled",
    "classes",
    "class_counts",
    "classes_unknown",
    "input",
    "extras",
    "shards",
    "provenance",
    "scanned",
}
MANIFEST_NAMES = {"manifest", "m", "entry", "s"}  # how the code names a manifest dict or one of its shard lines


def _reads(tree: ast.AST) -> list[tuple[int, str]]:
    """`manifest["field"]` and `manifest.get("field")` on a name that holds a manifest."""
    found = []
    for node in ast.walk(tree):
        key, target = None, None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            key, target = node.slice.value, node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            key, target = node.args[0].value, node.func.value
        name = target.id if isinstance(target, ast.Name) else target.attr if isinstance(target, ast.Attribute) else None
        if key in FIELDS and name in MANIFEST_NAMES:
            found.append((node.lineno, f"{name}[{key!r}]"))
        if key == "scanned":  # the provenance marker of a scanned set
            found.append((node.lineno, f"{name}[{key!r}]"))
    return found


def test_no_module_but_format_reads_a_manifest_field_by_its_name():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "data" / "format.py":
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in _reads(ast.parse(path.read_text()))]
    assert offenders == []


def test_the_check_finds_a_field_read_outside_format():
    tree = ast.parse('n = manifest["num_samples"]\nok = report["num_samples"]\nx = shards.provenance.get("scanned")')
    assert [what for _, what in _reads(tree)] == ["manifest['num_samples']", "provenance['scanned']"]


def test_manifest_reads_a_written_manifest_by_field():
    entries = [shard_entry("shard-000000.tar", 3, "a" * 64, 100), shard_entry("shard-000001.tar", 2, "b" * 64, 90)]
    m = Manifest(
        build_manifest(
            num_samples=5,
            labeled=True,
            classes=["x", "y"],
            class_counts=[4, 1],
            input_spec={"kind": "vector", "encoding": "npy", "shape": [2], "dtype": "float32"},
            extras=[],
            shards=entries,
            provenance={"source": "test"},
        )
    )
    assert (m.num_samples, m.labeled, m.classes, m.class_counts, m.num_shards) == (5, True, ["x", "y"], [4, 1], 2)
    assert m.shard_entries == [ShardEntry("shard-000000.tar", 3, "a" * 64, 100), ShardEntry("shard-000001.tar", 2, "b" * 64, 90)]
    assert not m.scanned and not m.classes_unknown


def test_a_scanned_manifest_says_so_and_an_unlabelled_scan_knows_no_class_names():
    spec = {"kind": "image", "encoding": "png", "shape": [4, 4, 1], "dtype": "uint8"}
    m = Manifest(
        scanned_manifest(
            "u/shard-{0..1}.tar", ["a.tar", "b.tar"], [3, 4], labeled=False, classes=[], class_counts=None, input_spec=spec
        )
    )
    assert m.scanned and m.classes_unknown and m.num_samples == 7
    assert m.shard_entries == [ShardEntry("a.tar", 3, None, None), ShardEntry("b.tar", 4, None, None)]
    assert m.provenance == {"source": "u/shard-{0..1}.tar", "scanned": True}

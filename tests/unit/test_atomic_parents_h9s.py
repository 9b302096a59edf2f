"""atomic_dir / atomic_file create the missing parents of their output only when they write, and remove
those (and only those) again when the write fails."""

from __future__ import annotations

import pytest

from mpltools.atomic import atomic_dir, atomic_file, check_can_write


@pytest.mark.parametrize("writer", [atomic_dir, atomic_file])
def test_a_failed_write_removes_the_parents_it_created_and_keeps_the_others(tmp_path, writer):
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "a" / "b" / "out"
    check_can_write(out, force=False)
    assert not (tmp_path / "kept" / "a").exists()  # the check creates nothing
    with pytest.raises(RuntimeError):
        with writer(out):
            assert (tmp_path / "kept" / "a" / "b").is_dir()
            raise RuntimeError("a reader failed half-way")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["kept"]


def test_a_successful_write_keeps_its_parents(tmp_path):
    out = tmp_path / "a" / "out"
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("x")
    assert (out / "x").read_text() == "x" and sorted(p.name for p in (tmp_path / "a").iterdir()) == ["out"]

"""atomic_dir / atomic_file create the missing parents of their output only when they write: a failed write
removes those (and only those) again, never a folder that existed or that something else filled meanwhile; the
check before a write creates nothing."""

from __future__ import annotations

import pytest

from mpltools.atomic import atomic_dir, atomic_file, check_can_write
from mpltools.errors import MplError


def test_check_can_write_creates_nothing(tmp_path):
    check_can_write(tmp_path / "a/b/out", force=False)
    assert list(tmp_path.iterdir()) == []


def test_check_can_write_refuses_a_file_on_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MplError, match="is a file, not a folder"):
        check_can_write(tmp_path / "f/b/out", force=False)


@pytest.mark.parametrize("writer", [atomic_dir, atomic_file])
def test_a_failed_write_removes_the_parents_it_created_only(tmp_path, writer):
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with writer(tmp_path / "kept/a/b/out") as tmp:
            assert tmp.parent == tmp_path / "kept/a/b"
            raise RuntimeError("mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_a_parent_someone_filled_meanwhile_stays(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "a/b/out"):
            (tmp_path / "a/other.txt").write_text("not ours")
            raise KeyboardInterrupt
    assert not (tmp_path / "a/b").exists() and (tmp_path / "a/other.txt").read_text() == "not ours"


def test_a_successful_write_keeps_its_parents_and_leaves_no_temp(tmp_path):
    with atomic_file(tmp_path / "a/b/out.txt") as tmp:
        tmp.write_text("ok")
    with atomic_dir(tmp_path / "a/b/outdir") as tmp:
        (tmp / "x").write_text("ok")
    assert (tmp_path / "a/b/out.txt").read_text() == (tmp_path / "a/b/outdir/x").read_text() == "ok"
    assert sorted(p.name for p in (tmp_path / "a/b").iterdir()) == ["out.txt", "outdir"]

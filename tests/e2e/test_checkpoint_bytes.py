"""Checkpoint files: byte-identical across identical runs, the user's umask, clear errors on a full disk."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpltools import checkpoint
from mpltools.errors import MplError
from tests.e2e.helpers import DIGITS_SPLIT, digits_split, env, mpl, run_process, sets, sha256

DIGITS = "recipes/tiny/digits.toml"
FAST = sets("schedule.steps=3", "checkpoint.every=2")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckbytes")
    (root / "recipes/tiny").mkdir(parents=True)
    (root / DIGITS).write_text((Path(__file__).parents[2] / DIGITS).read_text())
    digits_split(root)
    return root


def _train(work: Path, out: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mpltools", "train", DIGITS, "--out", out, *FAST, *DIGITS_SPLIT]
    return subprocess.run(
        cmd,
        cwd=work,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.umask(umask),
    )


def test_identical_runs_give_byte_identical_checkpoints_and_umask_modes(work):
    for out, mask in (("r1", 0o022), ("r2", 0o022), ("r3", 0o077)):
        r = _train(work, out, mask)
        assert r.returncode == 0, r.stderr[-3000:]
    for name in ("student.safetensors", "teacher.safetensors"):
        assert sha256(work / "r1" / name) == sha256(work / "r2" / name), name
    states = sorted((work / "r1/state").glob("step_*/*.safetensors"))
    assert states
    for f in states:
        assert sha256(f) == sha256(work / "r2" / f.relative_to(work / "r1")), f.name
    for run, mode in (("r1", 0o644), ("r3", 0o600)):
        files = [work / run / "student.safetensors", work / run / "teacher.safetensors", *(work / run / "state").glob("step_*/*")]
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == mode, (f, oct(f.stat().st_mode))
    for out in ("f1", "f2"):
        mpl(
            "finetune",
            "r1/student.safetensors",
            "--labeled",
            "d/split/labeled",
            "--set",
            "finetune.steps=2",
            "--out",
            out,
            cwd=work,
        )
    assert sha256(work / "f1/finetuned.safetensors") == sha256(work / "f2/finetuned.safetensors")


def test_file_size_limit_names_the_path_and_leaves_no_temp(work):
    # 12 KiB: the recipe and logs fit, a state's weights (17 KB) do not.
    line = f"ulimit -f 12; exec {sys.executable} -m mpltools train {DIGITS} --out full {' '.join([*FAST, *DIGITS_SPLIT])}"
    r = run_process(["bash", "-c", line], cwd=work, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "cannot write" in r.stderr and "full/" in r.stderr, r.stderr[-2000:]
    assert "file-size limit" in r.stderr
    left = [p.name for p in (work / "full").rglob("*") if ".tmp" in p.name or p.name.startswith(".pending")]
    assert not left, left
    assert not list((work / "full").glob("state/step_*")) or all(
        (p / "COMMITTED").is_file() for p in (work / "full").glob("state/step_*")
    )


def _full_disk(real_open):
    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and ".safetensors" in str(file):
            fh.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return fh

    return fake_open


def test_disk_full_during_state_save_names_the_state_and_cleans_up(tmp_path, monkeypatch):
    import builtins

    monkeypatch.setattr(builtins, "open", _full_disk(builtins.open))
    with pytest.raises(MplError, match=r"cannot write .*step_000000007.*disk is full"):
        checkpoint.save_state(tmp_path, 7, {"g": {"w": torch.ones(3)}}, {"step": 7}, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == []


def test_disk_full_during_export_names_the_file_and_cleans_up(tmp_path, monkeypatch):
    import builtins

    meta = checkpoint.CheckpointMeta(
        role="student",
        architecture="mlp",
        architecture_kwargs={},
        num_classes=2,
        input_shape=[2],
        input_spec={},
        normalisation={},
        augment={},
        classes=["a", "b"],
    )
    monkeypatch.setattr(builtins, "open", _full_disk(builtins.open))
    with pytest.raises(MplError, match=r"cannot write .*student.safetensors.*disk is full"):
        checkpoint.save_model(tmp_path / "student.safetensors", torch.nn.Linear(2, 2), meta)
    assert list(tmp_path.iterdir()) == []

"""`[teacher] optimizer = "adam"` through `mpl train`: Adam is what runs, its state is saved (safetensors, no
pickle) and an interrupted run resumes to bitwise the weights of an uninterrupted one."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.e2e.helpers import interrupted, mpl, replay, sets, tensors

TWOMOON = "recipes/tiny/twomoon.toml"
ADAM = sets('teacher.optimizer="adam"', "teacher.lr=0.01", "schedule.steps=300", "checkpoint.every=100", "runtime.log_every=100")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adam")
    replay(TWOMOON, root, only="mpl data")
    return root


def _teacher_opt_keys(run: Path) -> set[str]:
    state = sorted((run / "state").glob("step_*"))[-1]
    keys = set()
    for f in state.glob("*.safetensors"):
        with safe_open(f, framework="pt") as fh:
            keys |= {k for k in fh.keys() if "teacher_opt" in f.name or k.startswith("teacher_opt")}
    assert not list(state.glob("*.pt")) and not list(state.glob("*.pkl"))
    return {k.rsplit(".", 1)[-1] for k in keys}


def test_adam_teacher_is_used_and_its_state_is_saved(work):
    adam, sgd = work / "runs/adam", work / "runs/sgd"
    mpl("train", TWOMOON, "--out", adam, *ADAM, cwd=work)
    mpl("train", TWOMOON, "--out", sgd, *ADAM[2:], cwd=work)
    assert {"exp_avg", "exp_avg_sq", "step"} <= _teacher_opt_keys(adam)
    assert _teacher_opt_keys(sgd) <= {"momentum_buffer"}  # none at all with this recipe's momentum 0
    a, b = tensors(adam / "teacher.safetensors"), tensors(sgd / "teacher.safetensors")
    assert any(not (a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_adam_teacher_resumes_to_bitwise_identical_weights(work):
    straight, resumed = work / "runs/adam_straight", work / "runs/adam_resumed"
    mpl("train", TWOMOON, "--out", straight, *ADAM, cwd=work)
    interrupted("train", TWOMOON, *ADAM, out=resumed, sig=signal.SIGKILL, cwd=work)
    r = mpl("train", TWOMOON, "--out", resumed, *ADAM, cwd=work)
    assert "resuming" in r.stderr or not (resumed / "state").exists()
    for name in ("student.safetensors", "teacher.safetensors"):
        a, b = tensors(straight / name), tensors(resumed / name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), name

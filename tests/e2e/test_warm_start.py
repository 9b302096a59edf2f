"""Warm starts through the CLI: `mpl train RECIPE --out NEW --init-from OLD` trains a new run from another run's
state or checkpoints, records where it came from, and refuses what does not fit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.e2e.helpers import REPO, metrics, mpl

DIGITS = str(REPO / "recipes/tiny/digits.toml")
SETS = ["method.name=supervised", "runtime.log_every=5", "eval.every=0", "augment.kind=none", "student.ema_decay=0"]


def recipe(steps: int, *more: str) -> list[str]:
    return [DIGITS, *(x for s in [*SETS, f"schedule.steps={steps}", *more] for x in ("--set", s))]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["student/loss"]) for r in metrics(run) if not r.get("final")]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The tiny digits data and a finished 40-step supervised run, `source` (states at 10, 20, 30, 40)."""
    root = tmp_path_factory.mktemp("warm")
    mpl("data", "import", "digits", "--out", "data/tiny/digits/all", "--seed", "0", cwd=root)
    split = ["--labeled-per-class", "5", "--val-per-class", "10", "--seed", "0", "--out", "data/tiny/digits/split"]
    mpl("data", "split", "data/tiny/digits/all", *split, cwd=root)
    mpl("train", *recipe(40), "--out", "source", cwd=root)
    return root


@pytest.mark.slow
def test_a_warm_start_from_a_finished_run_trains_from_where_it_ended(work):
    mpl("train", *recipe(10), "--out", "warm", "--init-from", "source", cwd=work)
    source, warm = losses(work / "source"), losses(work / "warm")
    assert [s for s, _ in warm] == [5, 10]  # the step counter restarts at 0
    first, start, end = warm[0][1], source[0][1], source[-1][1]
    assert abs(first - end) < abs(first - start), (source, warm)  # near the source's end, not a fresh start
    state = (work / "source/state/step_000000040").resolve()
    digest = hashlib.sha256("".join(f"{sha256(f)}  {f.name}\n" for f in sorted(state.iterdir())).encode()).hexdigest()
    want = [{"kind": "state", "path": str(state), "step": 40, "sha256": digest}]
    [start_record] = json.loads((work / "warm/run.json").read_text())
    assert start_record["init_from"] == want and start_record["start_step"] == 0
    assert start_record["init_optimizers"] is False and start_record["continue_schedule"] is False
    with safe_open(work / "warm/student.safetensors", framework="pt") as fh:
        assert json.loads(fh.metadata()["extra"])["init_from"] == want
    # the same command again (as after an interruption) resumes the warm run; it does not start it over
    again = mpl("train", *recipe(10), "--out", "warm", "--init-from", "source", cwd=work)
    assert "not applied again" in again.stderr and len(json.loads((work / "warm/run.json").read_text())) == 2


@pytest.mark.slow
def test_continue_schedule_extends_a_finished_run_and_a_checkpoint_starts_the_student(work):
    mpl("train", *recipe(50), "--out", "longer", "--init-from", "source", "--continue-schedule", "--init-optimizers", cwd=work)
    assert [s for s, _ in losses(work / "longer")] == [45, 50]
    [start] = json.loads((work / "longer/run.json").read_text())
    assert start["start_step"] == 40 and start["continue_schedule"] and start["init_optimizers"]

    student = work / "source/student.safetensors"
    mpl("train", *recipe(5), "--out", "from_ckpt", "--init-from", student, cwd=work)
    [start] = json.loads((work / "from_ckpt/run.json").read_text())
    assert start["init_from"] == [
        {"kind": "checkpoint", "path": str(student.resolve()), "step": 40, "sha256": sha256(student), "network": "student"}
    ]
    first, fresh = losses(work / "from_ckpt")[0][1], losses(work / "source")[0][1]
    assert first < fresh - 0.5


@pytest.mark.slow
def test_warm_start_refusals(work):
    def refused(code: int, *args, needle: str) -> None:
        r = mpl("train", *args, cwd=work, check=False)
        assert r.returncode == code and needle in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]

    state = str((work / "source/state/step_000000040").resolve())
    narrow = "model.kwargs={width = 4, dropout = 0.2}"
    refused(1, *recipe(5, narrow), "--out", "n1", "--init-from", "source", needle=state)
    student = str((work / "source/student.safetensors").resolve())
    refused(1, *recipe(5, narrow), "--out", "n2", "--init-from", student, needle=student)
    assert not (work / "n1").exists() and not (work / "n2").exists()
    refused(1, *recipe(5), "--out", "n3", "--init-from", "nosuch", needle="nosuch")
    # --init-from on a folder that holds another run: exit 2 (and a different recipe stays refused)
    refused(2, *recipe(40), "--out", "source", "--init-from", student, needle="--init-from starts a new run")
    refused(2, *recipe(45), "--out", "source", "--init-from", student, needle="different recipe")
    refused(2, *recipe(5), "--out", "n4", "--init-from", student, "--continue-schedule", needle="checkpoint holds weights")
    refused(2, *recipe(40), "--out", "n5", "--init-from", "source", "--continue-schedule", needle="raise schedule.steps")
    refused(2, *recipe(5), "--out", "source", "--force", "--init-from", "source", needle="--force would delete")
    assert (work / "source/student.safetensors").is_file()

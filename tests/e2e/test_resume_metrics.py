"""A resumed run logs what the uninterrupted run logs: after SIGKILL, SIGINT or SIGTERM and a re-run of the same
command, its whole metrics.jsonl equals the uninterrupted run's except the wall-clock keys (loop_log.TIMING_KEYS),
for MPL (whose diag/h_* summarise a window of steps) and a baseline. Older resume states still resume."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpltools.loop_log import TIMING_KEYS
from tests.e2e.helpers import REPO, env, metrics, mpl

DIGITS = str(REPO / "recipes/tiny/digits.toml")
STEPS, EVERY, LOG = 34, 7, 5  # states at 7, 14, 21, 28: none on a logging step, so each holds an open h window


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_metrics")
    mpl("data", "import", "digits", "--out", "data/tiny/digits/all", "--seed", "0", cwd=root)
    split = ["--labeled-per-class", "5", "--val-per-class", "10", "--seed", "0", "--out", "data/tiny/digits/split"]
    mpl("data", "split", "data/tiny/digits/all", *split, cwd=root)
    return root


def args(method: str) -> list[str]:
    sets = [f"schedule.steps={STEPS}", f"checkpoint.every={EVERY}", f"runtime.log_every={LOG}", "checkpoint.keep_last=10"]
    return [DIGITS, *(x for s in [*sets, f"method.name={method}"] for x in ("--set", s))]


_straight: dict[str, Path] = {}


def straight(work: Path, method: str) -> Path:
    """The uninterrupted run of `method` (once per module)."""
    if method not in _straight:
        out = work / f"straight_{method}"
        mpl("train", *args(method), "--out", out, cwd=work)
        _straight[method] = out
    return _straight[method]


def records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in metrics(run)]


def interrupt(work: Path, out: Path, sig: int, method: str) -> int:
    """Start the run, send `sig` once its first state is committed; return its exit status."""
    cmd = [sys.executable, "-m", "mpltools", "train", *args(method), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=work, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob("state/step_*/COMMITTED")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    return proc.wait(timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "sig"),
    [("mpl", signal.SIGKILL), ("mpl", signal.SIGINT), ("mpl", signal.SIGTERM), ("uda", signal.SIGKILL)],
)
def test_a_resumed_run_logs_the_same_metrics_as_the_uninterrupted_run(work, method, sig):
    reference = straight(work, method)
    out = work / f"resumed_{method}_{int(sig)}"
    code = interrupt(work, out, sig, method)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), "the run was not interrupted mid-run"
    assert not (out / "student.safetensors").exists()
    rerun = mpl("train", *args(method), "--out", out, cwd=work)
    resumed_from = int(re.search(r"resuming .* from step (\d+)", rerun.stderr).group(1))
    assert 0 < resumed_from < STEPS
    if sig == signal.SIGKILL:
        assert resumed_from % LOG, "resumed on a logging step: the h window was empty"
    assert records(out) == records(reference)
    assert (out / "student.safetensors").read_bytes() == (reference / "student.safetensors").read_bytes()


@pytest.mark.slow
def test_a_state_without_the_loop_bookkeeping_resumes_with_a_warning(work, tmp_path):
    reference = straight(work, "mpl")
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / f"state/step_{STEPS:09d}")  # the run as a kill after step 28's state left it
    state = run / "state/step_000000028"
    scalars = json.loads((state / "state.json").read_text())

    (state / "state.json").write_text(json.dumps({**scalars, "format_version": 99}))
    r = mpl("train", *args("mpl"), "--out", run, cwd=work, check=False)
    assert r.returncode == 1 and "format version 99" in r.stderr and str(state) in r.stderr, r.stderr[-2000:]

    old = {k: v for k, v in scalars.items() if k not in ("format_version", "loop")}  # a version-1 state
    (state / "state.json").write_text(json.dumps(old))
    (state / "loop.safetensors").unlink()
    r = mpl("train", *args("mpl"), "--out", run, cwd=work)
    assert "older mpltools" in r.stderr and "resuming" in r.stderr
    assert (run / "student.safetensors").read_bytes() == (reference / "student.safetensors").read_bytes()
    got, want = records(run), records(reference)
    h_keys = {"diag/h_mean", "diag/h_abs_median", "diag/h_pos_frac"}
    assert [r for r in got if r["step"] != 30] == [r for r in want if r["step"] != 30]
    [got30], [want30] = [r for r in got if r["step"] == 30], [r for r in want if r["step"] == 30]
    assert {k: v for k, v in got30.items() if k not in h_keys} == {k: v for k, v in want30.items() if k not in h_keys}
    assert got30["diag/h_mean"] != want30["diag/h_mean"]  # the window held steps 29-30 only

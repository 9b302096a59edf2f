"""The catalogue of faults found from outside, part "signals and races": SIGTERM at several points of the
commands that write, two writers on one `--out`, a lock left by a killed process.

Every case runs `mpl` as a real process and sends the signal at a point the test can see from outside (a
temporary output, a run folder's recipe.toml, a committed resume state), so none of them depends on timing.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, env
from tests.e2e.test_bad_inputs import ok

DIGITS = str(REPO / "recipes/tiny/digits.toml")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """8x8 grey images (enough that writing them takes a moment), a split, and a student trained on it."""
    root = tmp_path_factory.mktemp("signals")
    ok("data", "import", "synthetic", "--out", root / "all", "--num-samples", "6000", "--image-size", "8", "--channels", "1")
    ok("data", "split", root / "all", "--labeled-per-class", "5", "--val-per-class", "10", "--out", root / "split")
    train = [
        "train",
        DIGITS,
        *("--set", f"data.labeled={root / 'split/labeled'}", "--set", f"data.unlabeled={root / 'split/unlabeled'}"),
        *("--set", f"data.val={root / 'split/val'}", "--set", "checkpoint.every=1", "--set", "eval.every=0"),
    ]
    ok(*train, "--set", "schedule.steps=2", "--out", root / "run")
    return {"root": root, "train": train, "student": root / "run/student.safetensors"}


def start(*args, cwd: Path) -> subprocess.Popen:
    """`mpl ARGS` in a process group of its own (so a signal can go to it and its DataLoader workers)."""
    return subprocess.Popen(
        [sys.executable, "-m", "mpltools", *map(str, args)],
        cwd=cwd,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="surrogateescape",  # a path that is not UTF-8 comes back as it was
        start_new_session=True,
    )


def wait_for(proc: subprocess.Popen, seen, what: str, timeout: float = 300) -> None:
    """Poll (every 2 ms) until `seen()` is true while `proc` runs; fail if it ends first."""
    end = time.monotonic() + timeout
    while not seen():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.002)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def leftovers(folder: Path) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(str(folder / ".*")) if not p.endswith((".", "..")))


# --- SIGTERM is Ctrl-C from a command's first line to its last -------------------------------------------------


def _writers(world: dict, out: Path) -> dict[str, list]:
    root = world["root"]
    return {
        "data import": ["data", "import", "synthetic", "--num-samples", "6000", "--image-size", "8", "--out", out],
        "data split": ["data", "split", root / "all", "--labeled-per-class", "5", "--out", out],
        "filter-unlabeled": [
            "data",
            "filter-unlabeled",
            root / "all",
            "--model",
            world["student"],
            "--threshold",
            "0",
            "--out",
            out,
        ],
        "eval --predictions": ["eval", world["student"], "--data", root / "all", "--predictions", out],
    }


@pytest.mark.parametrize("command", ["data import", "data split", "filter-unlabeled", "eval --predictions"])
def test_sigterm_while_an_output_is_written_leaves_nothing(world, tmp_path, command):
    out = tmp_path / "new" / "deeper" / "out"
    proc = start(*_writers(world, out)[command], cwd=tmp_path)
    wait_for(proc, lambda: glob.glob(str(out.parent / ".out.tmp-*")), "the temporary output appeared")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 130, err[-3000:]
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err, err[-3000:]
    if out.exists():  # the signal came as the output was being committed: it is whole, and nothing else is left
        assert (out / "manifest.json").is_file() or (out / "labeled/manifest.json").is_file(), sorted(out.rglob("*"))
        assert sorted(p.name for p in (tmp_path / "new").rglob(".*")) == []
    else:
        assert not (tmp_path / "new").exists(), f"left: {sorted((tmp_path / 'new').rglob('*'))}"


def test_sigterm_before_the_first_state_removes_the_new_run(world, tmp_path):
    run = tmp_path / "runs" / "a"
    proc = start(*world["train"], "--set", "schedule.steps=400", "--out", run, cwd=tmp_path)
    wait_for(proc, lambda: (run / "recipe.toml").is_file(), "the run folder's recipe.toml")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert not (tmp_path / "runs").exists(), "the new run folder (or the folder made for it, or its lock) is left"


def test_sigterm_again_and_again_after_a_state_exits_130_and_resumes(world, tmp_path):
    """SIGTERM to the whole process group (what `timeout` and schedulers send), every 20 ms until the command ends:
    DataLoader workers print nothing, the second signal does not turn 130 into 143, and the run resumes."""
    run = tmp_path / "run"
    train = [*world["train"], "--set", "schedule.steps=40", "--set", "data.workers=2", "--out", run]
    proc = start(*train, cwd=tmp_path)
    wait_for(proc, lambda: glob.glob(str(run / "state/step_*/COMMITTED")), "a committed resume state")
    while proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    code, err = finish(proc)
    assert code == 130, f"exit {code}\n{err[-3000:]}"
    assert "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    proc = start(*train, cwd=tmp_path)
    code, err = finish(proc)
    assert code == 0 and "resuming" in err, err[-3000:]
    assert (run / "student.safetensors").is_file()


# --- one writer per output ---------------------------------------------------------------------------------


def _refused_naming(code: int, err: str, holder: subprocess.Popen, command: str) -> None:
    assert code == 1, err[-3000:]
    assert "being written by another process" in err and f"pid {holder.pid}" in err and command in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def test_a_second_train_on_a_live_run_folder_is_refused(world, tmp_path):
    run = tmp_path / "run"
    first = start(*world["train"], "--set", "schedule.steps=400", "--out", run, cwd=tmp_path)
    wait_for(first, lambda: (run / "recipe.toml").is_file(), "the run folder")
    second = start(*world["train"], "--set", "schedule.steps=400", "--out", run, cwd=tmp_path)
    code, err = finish(second)
    _refused_naming(code, err, first, "mpl train")
    assert first.poll() is None, "the first run was disturbed"
    first.send_signal(signal.SIGTERM)
    assert finish(first)[0] == 130
    assert not (tmp_path / ".run.lock").exists()


def test_a_second_data_split_on_the_same_out_is_refused(world, tmp_path):
    out = tmp_path / "split"
    split = ["data", "split", world["root"] / "all", "--labeled-per-class", "5", "--out", out]
    first = start(*split, cwd=tmp_path)
    wait_for(first, lambda: glob.glob(str(tmp_path / ".split.tmp-*")), "the first split's temporary folder")
    # Held still while the second starts: a split can end before a second interpreter is up (seen under CI load).
    first.send_signal(signal.SIGSTOP)
    try:
        assert glob.glob(str(tmp_path / ".split.tmp-*")), "the first split ended before it was stopped"
        code, err = finish(start(*split, cwd=tmp_path))
    finally:
        first.send_signal(signal.SIGCONT)
    _refused_naming(code, err, first, "mpl data split")
    code, err = finish(first)
    assert code == 0, err[-3000:]
    assert json.loads((out / "labeled/manifest.json").read_text())["num_samples"] == 50
    assert leftovers(tmp_path) == [], "a lock file or a temporary folder is left"


def test_a_lock_left_by_a_killed_process_does_not_block(world, tmp_path):
    out = tmp_path / "all"
    command = ["data", "import", "synthetic", "--num-samples", "6000", "--image-size", "8", "--out", out]
    first = start(*command, cwd=tmp_path)
    wait_for(first, lambda: glob.glob(str(tmp_path / ".all.tmp-*")), "the temporary output")
    first.send_signal(signal.SIGKILL)
    finish(first)
    assert (tmp_path / ".all.lock").is_file() and str(first.pid) in (tmp_path / ".all.lock").read_text()
    code, err = finish(start(*command, cwd=tmp_path))
    assert code == 0, err[-3000:]
    assert (out / "manifest.json").is_file() and leftovers(tmp_path) == []


# --- limits and odd values: a memory limit, a run folder whose name is not UTF-8, an output that cannot be written --


@pytest.mark.parametrize("megabytes", [300, 500, 575])
def test_eval_under_a_memory_limit_says_memory_ran_out(world, tmp_path, megabytes):
    """Whatever the point where memory runs out (mapping libtorch, torch's own initialisation, which aborts with
    std::bad_alloc, or Python objects), the command ends with exit 1 and a message, never a traceback or an abort."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (megabytes << 20, megabytes << 20))

    r = subprocess.run(
        [sys.executable, "-m", "mpltools", "eval", world["student"], "--data", world["root"] / "split/val"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
    )
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "ran out of memory" in r.stderr and "ulimit -v" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]


def test_a_run_folder_whose_name_is_not_utf8_resumes_and_its_student_evaluates(world, tmp_path):
    run = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    train = [*world["train"], "--set", "schedule.steps=2", "--out", run]
    ok(*train)
    proc = start(*train, cwd=tmp_path)  # a finished run resumes from its last state
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "resuming" in err, err[-3000:]
    assert os.fsencode(out.strip()) == os.fsencode(f"{run}/student.safetensors"), "stdout does not carry the path's bytes"
    code, err = finish(start("eval", f"{run}/student.safetensors", "--data", world["root"] / "split/val", cwd=tmp_path))
    assert code == 0, err[-3000:]


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write into: read-only sysfs for root (who ignores permissions), else mode 0555."""
    if os.geteuid() == 0:
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("no read-only folder for root here")
        return Path("/sys/kernel")
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    return folder


@pytest.mark.parametrize("command", ["data split", "train"])
def test_an_unwritable_or_file_shaped_out_names_out_not_a_hidden_temporary(world, tmp_path, command):
    (tmp_path / "a-file").write_text("not a folder")
    for out in (_unwritable(tmp_path) / "out", tmp_path / "a-file"):
        args = (
            ["data", "split", world["root"] / "all", "--labeled-per-class", "5", "--force", "--out", out]
            if command == "data split"
            else [*world["train"], "--set", "schedule.steps=2", "--force", "--out", out]
        )
        if command == "data split" and out.name == "a-file":
            args = ["data", "split", world["root"] / "all", "--labeled-per-class", "5", "--out", out / "under"]
        code, err = finish(start(*args, cwd=tmp_path))
        assert code == 1, (out, err[-3000:])
        assert f"{out}" in err and ".tmp-" not in err and "Error:" not in err and "Traceback" not in err, err[-3000:]
    assert (tmp_path / "a-file").read_text() == "not a folder"


# --- bad samples are not carried forward ----------------------------------------------------------------------


def _set_with(folder: Path, bad: bytes | None, spec) -> None:
    import numpy as np

    from mpltools.data.codecs import Sample, encode_png
    from mpltools.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    writer = ShardWriter(folder, input_spec=spec, classes=["a", "b"], labeled=True, provenance={}, max_per_shard=50)
    for i in range(40):
        shape = (8 + i % 3, 8, spec.channels or 1) if spec.shape is None else spec.shape
        data = encode_png(rng.integers(0, 255, shape, dtype=np.uint8))
        writer.write(Sample(f"s{i:04d}", "png", bad if (i == 17 and bad is not None) else data, i % 2))
    writer.close()


def test_data_split_decodes_what_it_copies(tmp_path):
    from mpltools.data.codecs import InputSpec

    _set_with(tmp_path / "all", b"\x89PNG\r\n\x1a\n but cut off", InputSpec("image", "png", (8, 8, 1)))
    code, err = finish(
        start("data", "split", tmp_path / "all", "--labeled-per-class", "5", "--out", tmp_path / "split", cwd=tmp_path)
    )
    assert code == 1 and "'s0017'" in err and "cannot be decoded" in err, err[-3000:]
    assert not (tmp_path / "split").exists() and leftovers(tmp_path) == []


def test_an_imagefolder_of_mixed_sizes_records_its_channels_and_they_are_checked(tmp_path):
    import numpy as np
    from PIL import Image

    from mpltools.data.codecs import InputSpec, encode_png

    for c, size in (("cat", 10), ("dog", 12)):
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((size, size + i, 3), 40 * i, np.uint8)).save(tmp_path / "tree" / c / f"{i}.png")
    ok("data", "import", "imagefolder", tmp_path / "tree", "--out", tmp_path / "set")
    spec = json.loads((tmp_path / "set/manifest.json").read_text())["input"]
    assert spec["shape"] is None and spec["channels"] == 3, spec
    grey = encode_png(np.zeros((9, 9, 1), np.uint8))  # a grey image in a set of RGB images of varying size
    _set_with(tmp_path / "mixed", grey, InputSpec("image", "png", None, channels=3))
    proc = start("data", "info", "--verify", tmp_path / "mixed", cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "'s0017'" in out + err and "3-channel" in out + err, (out + err)[-3000:]

"""`mpl recipes validate` runs exactly the checks `mpl train` runs before writing
(`preflight.check_training`, one implementation). Whatever train refuses before its first byte,
validate refuses too (as a recipe error, exit 2), naming the same file or key; and neither writes."""

from __future__ import annotations

import pytest

from tests.e2e.helpers import TWOMOON, cli, sets
from tests.e2e.test_bad_inputs import w  # noqa: F401 - `w` is the catalogue's module fixture

SMALL_CNN = ["--set", "model.name=small_cnn"]


def IMAGES(w):  # the catalogue's 8x8 one-channel images as all the run's sets
    sets = ["--set", f"data.labeled={w['img']}", "--set", f"data.unlabeled={w['img']}", "--set", "data.val="]
    return [*sets, *SMALL_CNN, "--set", "model.kwargs={}", "--set", "data.batch_size=4"]


CASES = [
    ("empty-val", lambda w: ["--set", f"data.val={w['empty_vec']}"], "empty_vec"),
    ("empty-labeled", lambda w: sets("method.name=supervised", f"data.labeled={w['empty_vec']}"), "empty_vec"),
    ("tracker-not-installed", lambda w: ["--set", 'runtime.trackers=["wandb"]'], "runtime.trackers"),
    ("teacher-student-momentum", lambda w: sets("teacher.momentum=0.5", "student.momentum=0.9"), "momentum"),
    (
        "nan-teacher",
        lambda w: sets("method.name=pseudo-label", f"method.teacher_checkpoint={w['nan']}"),
        "nan.safetensors",
    ),
    ("negative-lr", lambda w: ["--set", "student.lr=-1"], "--set student.lr=-1: student.lr must be >= 0, not -1."),
    ("seed-negative", lambda w: ["--seed", "-3"], "runtime.seed"),
    ("seed-huge", lambda w: ["--seed", str(10**23)], "runtime.seed"),
    ("threads-huge", lambda w: ["--set", f"runtime.threads={10**23}"], "runtime.threads"),
    ("threads-many", lambda w: ["--set", "runtime.threads=5000"], "runtime.threads must be in [0, 1024]"),
    (
        "kwargs-width-huge",
        lambda w: [*SMALL_CNN, "--set", f"model.kwargs={{width={10**23}}}"],
        "'width' must be a positive integer",
    ),
    ("normalisation-channels", lambda w: [*IMAGES(w), "--set", "augment.normalisation=imagenet"], "augment.normalisation"),
]


@pytest.fixture(scope="module")
def wv(w):
    """An empty vector set with the TwoMoon classes (the catalogue's `empty` holds images)."""
    from pathlib import Path

    from mpltools.data.opening import open_shard_set
    from mpltools.data.shards import ShardWriter

    like = open_shard_set(w["labeled"])
    folder = Path(w["root"]) / "empty_vec"
    if not folder.exists():
        ShardWriter(folder, input_spec=like.input_spec, classes=like.classes, labeled=True, provenance={"test": "parity"}).close()
    return {**w, "empty_vec": str(folder)}


@pytest.mark.parametrize("extra, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_validate_refuses_what_train_refuses(wv, tmp_path, extra, names):
    args = [*wv["base"], *extra(wv)]
    out = tmp_path / "deep" / "run"
    train_code, train_text = cli("train", TWOMOON, *args, "--out", out)
    assert train_code in (1, 2) and names in train_text and "Traceback" not in train_text, train_text[-2000:]
    assert "frame #" not in train_text and "Error:" not in train_text  # no C++ backtrace, no raw exception text
    code, text = cli("recipes", "validate", TWOMOON, *args, "--out", out)
    assert code == 2 and names in text and "Traceback" not in text, text[-2000:]
    assert not (tmp_path / "deep").exists()

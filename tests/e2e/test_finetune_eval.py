"""`mpl finetune` and `mpl eval` through the CLI, the digits chain as one shell pipeline, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.e2e.helpers import REPO, accelerate_launch, meta_of, mpl, replay, run_cli, run_process, sets, tensors, with_weights

pytestmark = pytest.mark.slow  # trains networks (module fixture); `pytest -m 'not slow'` skips it

DIGITS = "recipes/tiny/digits.toml"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft")
    replay(DIGITS, root)
    return root


def test_digits_chain_runs_as_one_shell_pipeline(tmp_path):
    script = """
    set -euo pipefail
    mpl data import digits --out d/all > /dev/null
    mpl data split d/all --labeled-per-class 5 --val-per-class 10 --out d/split > /dev/null
    mpl train recipes/tiny/digits.toml --out r --set data.labeled=d/split/labeled --set data.unlabeled=d/split/unlabeled --set data.val=d/split/val \
      | mpl finetune - --labeled d/split/labeled --set finetune.steps=3 \
      | mpl eval - --data d/split/val --json
    """
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    r = run_process(["bash", "-c", script], cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert result["num_samples"] == 100 and 0.0 <= result["top1"] <= 1.0
    assert result["checkpoint"].endswith("r/finetune/finetuned.safetensors") and result["checkpoint_role"] == "finetuned"


def test_finetune_writes_metadata_and_resumes(work):
    student = work / "runs/tiny/digits/student.safetensors"
    finetuned = work / "runs/tiny/digits/finetune/finetuned.safetensors"
    meta = meta_of(finetuned)
    assert meta["role"] == "finetuned" and meta["architecture"] == "small_cnn"
    from mpltools.checkpoint import file_sha256

    assert meta["parent_sha256"] == file_sha256(student)
    extra = json.loads(meta["extra"])
    assert extra["finetune_steps"] == 5 and extra["parent_role"] == "student"

    # Re-running the same command resumes (nothing left to do) and gives the same file.
    meta_before, before = meta_of(finetuned), tensors(finetuned)
    r = mpl(
        "finetune",
        student,
        "--labeled",
        "data/tiny/digits/split/labeled",
        "--recipe",
        DIGITS,
        "--out",
        "runs/tiny/digits/finetune",
        cwd=work,
    )
    assert r.stdout.strip() == "runs/tiny/digits/finetune/finetuned.safetensors"
    assert "resuming" in r.stderr
    meta_after, after = meta_of(finetuned), tensors(finetuned)
    assert meta_after == meta_before
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_finetune_settings_come_from_the_checkpoint_then_set(work):
    student = work / "runs/tiny/digits/student.safetensors"
    labeled = work / "data/tiny/digits/split/labeled"
    r = run_cli(
        "finetune",
        student,
        "--labeled",
        labeled,
        *sets("finetune.steps=2", "finetune.lr=0.0"),
        "--out",
        work / "runs/ft0",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["step"] == 2
    # lr 0: the finetuned weights equal the student's (BN running statistics may move; parameters may not).
    from mpltools.checkpoint import load_model

    a, _ = load_model(student)
    b, _ = load_model(work / "runs/ft0/finetuned.safetensors")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("role", ["student", "teacher", "finetune/finetuned"])
def test_eval_reports_every_metric_for_any_checkpoint(work, role):
    ckpt = work / f"runs/tiny/digits/{role}.safetensors"
    r = run_cli("eval", ckpt, "--data", work / "data/tiny/digits/split/val", "--json")
    assert r.exit_code == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["num_samples"] == 100
    assert 0 <= m["top1"] <= m["top5"] <= 1 and m["loss"] > 0 and 0 <= m["ece"] <= 1
    assert len(m["per_class_top1"]) == 10
    assert m["top1"] == pytest.approx(sum(v * 10 for v in m["per_class_top1"].values()) / 100)


def test_eval_metrics_match_an_independent_computation(work):
    from mpltools.checkpoint import load_model
    from mpltools.data.loaders import load_in_memory
    from mpltools.data.opening import open_shard_set
    from mpltools.data.transforms import to_float_batch

    ckpt = work / "runs/tiny/digits/student.safetensors"
    model, meta = load_model(ckpt)
    x, y, _ = load_in_memory(open_shard_set(work / "data/tiny/digits/split/val"))
    with torch.no_grad():
        logits = model.eval()(to_float_batch(torch.from_numpy(x), meta.normalisation["mean"], meta.normalisation["std"]))
    y = torch.from_numpy(y)
    top1 = (logits.argmax(1) == y).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    r = mpl("eval", ckpt, "--data", "data/tiny/digits/split/val", "--json", "--batch-size", "7", cwd=work)
    m = json.loads(r.stdout)
    assert m["top1"] == pytest.approx(top1, abs=1e-6) and m["loss"] == pytest.approx(loss, rel=1e-5)


def test_eval_real_precision_and_predictions(work):
    from mpltools.data.opening import open_shard_set

    val = open_shard_set(work / "data/tiny/digits/split/val")
    keys = [s.key for s in val.samples()]
    real = work / "real.json"
    # Every class counts as correct for all but the first ten samples, which have no ReaL label.
    real.write_text(json.dumps({k: (list(range(10)) if i >= 10 else []) for i, k in enumerate(keys)}))
    r = mpl(
        "eval",
        "runs/tiny/digits/student.safetensors",
        "--data",
        "data/tiny/digits/split/val",
        "--real",
        real,
        "--predictions",
        "preds",
        "--json",
        cwd=work,
    )
    m = json.loads(r.stdout)
    assert m["real_precision_at_1"] == 1.0 and m["real_counted"] == 90
    info = json.loads(mpl("data", "info", "preds", "--json", "--verify", cwd=work).stdout)
    assert info["num_samples"] == 100 and info["input"]["shape"] == [10] and info["verified"]
    bad = work / "bad_real.json"
    bad.write_text(json.dumps({keys[0]: [1]}))
    r = mpl(
        "eval",
        "runs/tiny/digits/student.safetensors",
        "--data",
        "data/tiny/digits/split/val",
        "--real",
        bad,
        cwd=work,
        check=False,
    )
    assert r.returncode == 1 and "not in the ReaL file" in r.stderr


def test_eval_is_exact_over_two_processes(work):
    args = ["runs/tiny/digits/student.safetensors", "--data", "data/tiny/digits/split/val", "--json", "--batch-size", "32"]
    single = json.loads(mpl("eval", *args, cwd=work).stdout)
    r = accelerate_launch("-m", "mpltools", "eval", *args, cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    double = json.loads(r.stdout)
    assert double["world_size"] == 2 and double["num_samples"] == single["num_samples"] == 100
    for key in ("top1", "top5", "loss", "ece"):
        assert double[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    assert double["per_class_top1"] == pytest.approx(single["per_class_top1"])


# ------------------------------------------------------------------ bad input


def test_eval_refuses_an_unlabelled_set(work):
    r = mpl("eval", "runs/tiny/digits/student.safetensors", "--data", "data/tiny/digits/split/unlabeled", cwd=work, check=False)
    assert r.returncode == 1 and "unlabelled" in r.stderr and "data/tiny/digits/split/unlabeled" in r.stderr


def test_checkpoint_for_other_classes_or_inputs_is_refused(work):
    mpl(
        "data",
        "import",
        "synthetic",
        "--num-samples",
        "40",
        "--num-classes",
        "4",
        "--image-size",
        "8",
        "--channels",
        "1",
        "--out",
        "other4",
        cwd=work,
    )
    r = mpl("eval", "runs/tiny/digits/student.safetensors", "--data", "other4", cwd=work, check=False)
    assert r.returncode == 1 and "10 classes" in r.stderr and "student.safetensors" in r.stderr
    mpl(
        "data",
        "import",
        "synthetic",
        "--num-samples",
        "40",
        "--num-classes",
        "10",
        "--image-size",
        "16",
        "--channels",
        "1",
        "--out",
        "big16",
        cwd=work,
    )
    r = mpl("eval", "runs/tiny/digits/student.safetensors", "--data", "big16", cwd=work, check=False)
    assert r.returncode == 1 and "shape" in r.stderr
    r = mpl("finetune", "runs/tiny/digits/student.safetensors", "--labeled", "other4", "--out", "ft_bad", cwd=work, check=False)
    assert r.returncode == 1 and not (work / "ft_bad/finetuned.safetensors").exists()


def test_truncated_corrupt_and_non_finite_checkpoints_are_named(work):
    good = work / "runs/tiny/digits/student.safetensors"
    truncated = work / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = work / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)

    def one_nan(weights):
        next(v for v in weights.values() if v.is_floating_point()).view(-1)[0] = float("nan")

    nan = Path(with_weights(good, work / "nan.safetensors", one_nan))
    foreign = work / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    for path, needle in (
        (truncated, "truncated or corrupt"),
        (garbage, "truncated or corrupt"),
        (nan, "NaN"),
        (foreign, "not an mpltools checkpoint"),
        (work / "missing.safetensors", "does not exist"),
    ):
        for args in (
            ["eval", path, "--data", "data/tiny/digits/split/val"],
            ["finetune", path, "--labeled", "data/tiny/digits/split/labeled", "--out", "ft_x"],
        ):
            r = mpl(*args, cwd=work, check=False)
            assert r.returncode == 1, (path, r.stderr)
            assert needle in r.stderr and path.name in r.stderr, (path, r.stderr)
            assert "Traceback" not in r.stderr
    assert not (work / "ft_x/finetuned.safetensors").exists()


def test_checkpoint_for_another_architecture_is_refused(work):
    good = work / "runs/tiny/digits/student.safetensors"
    meta = {**meta_of(good), "architecture_kwargs": json.dumps({"width": 16, "dropout": 0.2})}  # weights are width 8
    other = work / "other_arch.safetensors"
    save_file(tensors(good), other, metadata=meta)
    r = mpl("eval", other, "--data", "data/tiny/digits/split/val", cwd=work, check=False)
    assert r.returncode == 1 and "do not fit" in r.stderr and "other_arch.safetensors" in r.stderr

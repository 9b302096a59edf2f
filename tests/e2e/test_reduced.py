"""`mpl reduced predict` / `mpl reduced train` through the CLI: the tiny recipe's chain, the reduced
teacher starting as the identity, step 2 without the large checkpoint, resume, and bad input."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from mpltools.checkpoint import load_model
from mpltools.data import predictions
from mpltools.data.opening import open_shard_set
from tests.e2e.helpers import accelerate_launch, interrupted, meta_of, metrics, mpl, replay, sets, tensors

pytestmark = pytest.mark.slow  # trains networks (module fixture); `pytest -m 'not slow'` skips it

RECIPE = "recipes/tiny/reduced_b7_yfcc.toml"
D = "data/tiny/reduced_b7_yfcc"
LARGE = "runs/tiny/reduced_b7_yfcc_large_teacher/student.safetensors"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reduced")
    results = replay(RECIPE, root)
    assert json.loads(results[-1].stdout)["num_samples"] == 40  # the header's last line: eval of the finetuned student
    return root


def test_chain_writes_prediction_sets_and_both_checkpoints(work):
    large_sha = __import__("mpltools.checkpoint", fromlist=["file_sha256"]).file_sha256(work / LARGE)
    for pred, source in ((f"{D}/pred_unlabeled", f"{D}/yfcc_filtered"), (f"{D}/pred_labeled", f"{D}/split/labeled")):
        p, s = open_shard_set(work / pred), open_shard_set(work / source)
        prov = p.provenance
        assert prov["teacher_sha256"] == large_sha and prov["source_manifest_sha256"] == s.manifest_sha256
        assert p.extras == [predictions.LOGITS] and p.labeled == s.labeled and p.num_samples == s.num_samples
        original = list(s.samples())
        stored = list(p.samples())
        assert [x.key for x in stored] == [x.key for x in original]
        assert all(a.data == b.data and a.label == b.label for a, b in zip(stored, original))
        # The stored logits are the large teacher's (float16) on the eval view.
        model, meta = load_model(work / LARGE)
        from mpltools.data.codecs import decode_input
        from mpltools.data.transforms import AugmentSpec, eval_view, to_float_batch

        aug = AugmentSpec(kind=meta.augment["kind"], image_size=meta.augment["image_size"])
        x = to_float_batch(
            torch.from_numpy(np.stack([eval_view(decode_input(o), aug) for o in original[:8]])),
            meta.normalisation["mean"],
            meta.normalisation["std"],
        )
        with torch.no_grad():
            expected = model.eval()(x).numpy()
        got = np.stack([predictions.load(o.extras[predictions.LOGITS], o.key) for o in stored[:8]])
        assert got.dtype == np.float16 and np.allclose(got.astype(np.float32), expected, atol=2e-2, rtol=2e-3)

    run = work / "runs/tiny/reduced_b7_yfcc"
    teacher, student = meta_of(run / "reduced_teacher.safetensors"), meta_of(run / "student.safetensors")
    assert teacher["role"] == "reduced_teacher" and teacher["architecture"] == "reduced_teacher"
    assert json.loads(teacher["input_shape"]) == [10] and json.loads(teacher["extra"])["large_teacher_sha256"] == large_sha
    assert student["role"] == "student" and student["architecture"] == "efficientnet_b7"
    assert json.loads(student["input_shape"]) == [3, 32, 32]
    steps = [r["step"] for r in metrics(run) if not r.get("final")]
    assert steps == [1, 2, 3, 4]
    assert all("feedback/h" in r and "teacher/sup" in r for r in metrics(run) if not r.get("final"))
    assert (run / "finetune/finetuned.safetensors").is_file()  # mpl finetune took the student


def test_reduced_teacher_starts_as_the_identity_of_the_stored_distribution(run_cli, work, monkeypatch):
    monkeypatch.chdir(work)
    out = work / "runs/identity"
    r = run_cli("reduced", "train", RECIPE, "--out", out, "--set", "teacher.lr=0.0", "--set", "schedule.steps=1")
    assert r.exit_code == 0, r.stderr
    model, meta = load_model(out / "reduced_teacher.safetensors")
    assert meta.role == "reduced_teacher"
    z = np.stack(
        [
            predictions.as_logits(predictions.LOGITS, predictions.load(s.extras[predictions.LOGITS], s.key), 10, s.key)
            for s in open_shard_set(work / f"{D}/pred_unlabeled").samples()
        ]
    )
    z = torch.from_numpy(z)
    with torch.no_grad():
        assert torch.equal(model(z).softmax(1), z.softmax(1))
    # The trained one (teacher.lr > 0) has moved away from it.
    trained, _ = load_model(work / "runs/tiny/reduced_b7_yfcc/reduced_teacher.safetensors")
    with torch.no_grad():
        assert not torch.equal(trained(z), z)


def test_step_2_does_not_need_the_large_checkpoint(work):
    large = work / LARGE
    hidden = large.with_name("moved-away.safetensors")
    large.rename(hidden)
    try:
        r = mpl("reduced", "train", RECIPE, "--out", work / "runs/no_large", "--set", "schedule.steps=2", "--json", cwd=work)
        assert Path(json.loads(r.stdout)["student"]).is_file()
    finally:
        hidden.rename(large)


def _tensors_equal(a: Path, b: Path) -> bool:
    x, y = tensors(a), tensors(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_an_interrupted_run_resumes_to_the_same_weights(work):
    extra = sets("schedule.steps=30", "checkpoint.every=3", "runtime.log_every=5")
    mpl("reduced", "train", RECIPE, "--out", work / "runs/straight", *extra, cwd=work)
    out = work / "runs/resumed"
    interrupted("reduced", "train", RECIPE, *extra, out=out, sig=signal.SIGKILL, cwd=work)
    assert not (out / "student.safetensors").exists()  # killed mid-run
    r = mpl("reduced", "train", RECIPE, "--out", out, *extra, cwd=work)
    assert "resuming" in r.stderr
    for name in ("student.safetensors", "reduced_teacher.safetensors"):
        assert _tensors_equal(work / "runs/straight" / name, out / name), name
    steps = [m["step"] for m in metrics(out) if not m.get("final")]
    assert steps == sorted(set(steps)) and steps[-1] == 30


def test_topk_predictions_train_too(run_cli, work, monkeypatch):
    monkeypatch.chdir(work)
    for name, source in (("topk_u", f"{D}/yfcc_filtered"), ("topk_l", f"{D}/split/labeled")):
        r = run_cli("reduced", "predict", work / LARGE, "--data", work / source, "--topk", "3", "--out", work / name)
        assert r.exit_code == 0, r.stderr
    stored = next(open_shard_set(work / "topk_u").samples()).extras[predictions.TOPK]
    assert predictions.load(stored, "x").dtype == predictions.TOPK_DTYPE
    r = run_cli(
        "reduced",
        "train",
        RECIPE,
        "--out",
        work / "runs/topk",
        *sets("schedule.steps=2", f'data.labeled="{work / "topk_l"}"', f'data.unlabeled="{work / "topk_u"}"'),
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(meta_of(work / "runs/topk/reduced_teacher.safetensors")["extra"])["reads"] == predictions.TOPK
    mixed = run_cli("reduced", "train", RECIPE, "--out", work / "runs/mixed", "--set", f'data.labeled="{work / "topk_l"}"')
    assert mixed.exit_code == 1 and "--topk" in mixed.stderr and not (work / "runs/mixed").exists()


def test_two_processes_predict_byte_identical_sets(work):
    predict = ["reduced", "predict", LARGE, "--data", f"{D}/split/labeled", "--batch-size", "16"]
    two = accelerate_launch("-m", "mpltools", *predict, "--out", "pred_two", cwd=work)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.strip().splitlines() == ["pred_two"]
    mpl(*predict, "--out", "pred_one", cwd=work)
    a, b = (json.loads((work / d / "manifest.json").read_text()) for d in ("pred_one", "pred_two"))
    a["provenance"].pop("command"), b["provenance"].pop("command")
    assert a == b
    for shard in a["shards"]:
        assert (work / "pred_one" / shard["name"]).read_bytes() == (work / "pred_two" / shard["name"]).read_bytes()


def test_a_prediction_set_that_no_longer_matches_its_source_is_refused(run_cli, work, monkeypatch):
    monkeypatch.chdir(work)
    src = work / "data/src_labeled"
    shutil.copytree(work / f"{D}/split/labeled", src)
    assert run_cli("reduced", "predict", LARGE, "--data", src, "--out", work / "pred_src").exit_code == 0
    unl = f'data.unlabeled="{work / "pred_src"}"'  # the same set as both, to keep it short
    ok = run_cli(
        "reduced",
        "train",
        RECIPE,
        "--out",
        work / "runs/src_ok",
        *sets("schedule.steps=1", f'data.labeled="{work / "pred_src"}"'),
        "--set",
        unl,
    )
    assert ok.exit_code == 0, ok.stderr
    # The source is re-created with other samples (another split seed) at the same path.
    assert (
        run_cli(
            "data",
            "split",
            work / f"{D}/imagenet",
            "--labeled-per-class",
            "12",
            "--val-per-class",
            "4",
            "--seed",
            "7",
            "--out",
            work / "data/resplit",
        ).exit_code
        == 0
    )
    shutil.rmtree(src)
    shutil.copytree(work / "data/resplit/labeled", src)
    r = run_cli("reduced", "train", RECIPE, "--out", work / "runs/src_bad", "--set", f'data.labeled="{work / "pred_src"}"')
    assert r.exit_code == 1 and str(work / "pred_src") in r.stderr and str(src) in r.stderr and "does not match" in r.stderr
    assert not (work / "runs/src_bad").exists()


@pytest.mark.parametrize(
    "override, code, needle",
    [
        (["--set", f"data.labeled={D}/split/labeled"], 1, "holds no stored teacher predictions"),
        (["--set", "model.teacher_name=mlp"], 2, "model.teacher_name"),
        (["--set", "method.name=uda"], 2, "method.name"),
    ],
)
def test_bad_step_2_input(run_cli, work, monkeypatch, override, code, needle):
    monkeypatch.chdir(work)
    r = run_cli("reduced", "train", RECIPE, "--out", work / "runs/bad", *override)
    assert r.exit_code == code and needle in r.stderr, r.stderr
    assert not (work / "runs/bad").exists()


def test_bad_step_1_input_and_refusals(run_cli, work, tmp_path, monkeypatch):
    monkeypatch.chdir(work)
    truncated = tmp_path / "large.safetensors"
    truncated.write_bytes((work / LARGE).read_bytes()[:-64])
    r = run_cli("reduced", "predict", truncated, "--data", f"{D}/split/labeled", "--out", tmp_path / "p")
    assert r.exit_code == 1 and str(truncated) in r.stderr and not (tmp_path / "p").exists()
    assert (
        run_cli(
            "data",
            "import",
            "synthetic",
            "--num-samples",
            "20",
            "--num-classes",
            "5",
            "--image-size",
            "40",
            "--out",
            tmp_path / "c5",
        ).exit_code
        == 0
    )
    r = run_cli("reduced", "predict", LARGE, "--data", tmp_path / "c5", "--out", tmp_path / "p")
    assert r.exit_code == 1 and "classes" in r.stderr and not (tmp_path / "p").exists()
    r = run_cli("reduced", "predict", LARGE, "--data", tmp_path / "c5", "--ignore-data-classes", "--out", tmp_path / "p")
    assert r.exit_code == 2 and "is labelled" in r.stderr and not (tmp_path / "p").exists()
    # An unlabelled pool whose class names mean nothing is accepted with the flag; it gets the teacher's classes.
    assert run_cli("data", "split", tmp_path / "c5", "--labeled-per-class", "1", "--out", tmp_path / "c5split").exit_code == 0
    r = run_cli(
        "reduced", "predict", LARGE, "--data", tmp_path / "c5split/unlabeled", "--ignore-data-classes", "--out", tmp_path / "ok"
    )
    assert r.exit_code == 0, r.stderr
    assert open_shard_set(tmp_path / "ok").classes == open_shard_set(work / f"{D}/split/val").classes
    r = run_cli("reduced", "predict", LARGE, "--data", f"{D}/split/labeled", "--topk", "2", "--logits", "--out", tmp_path / "p")
    assert r.exit_code == 2 and not (tmp_path / "p").exists()
    r = run_cli("reduced", "predict", LARGE, "--data", f"{D}/split/labeled", "--topk", "11", "--out", tmp_path / "p")
    assert r.exit_code == 2 and "10 classes" in r.stderr
    # The reduced teacher reads predictions, not images: eval refuses it; mpl train refuses the reduced recipe.
    r = run_cli("eval", "runs/tiny/reduced_b7_yfcc/reduced_teacher.safetensors", "--data", f"{D}/split/val")
    assert r.exit_code == 1 and "reduced teacher" in r.stderr and "student.safetensors" in r.stderr
    r = run_cli("train", RECIPE, "--out", tmp_path / "t")
    assert r.exit_code == 2 and "mpl reduced train" in r.stderr and not (tmp_path / "t").exists()
    # The student is a normal checkpoint (as a subprocess: stdout is the JSON only).
    r = mpl("eval", "runs/tiny/reduced_b7_yfcc/student.safetensors", "--data", f"{D}/split/val", "--json", cwd=work)
    assert json.loads(r.stdout)["checkpoint_role"] == "student"

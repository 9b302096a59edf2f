"""`mpl data filter-unlabeled` through the CLI: top-K per class, threshold, balancing, exact and near
duplicates of an evaluation set, stored top-k predictions, 1 vs 2 processes, and bad input.

Scores are recomputed here independently of the command (one forward over all images at once)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mpltools.checkpoint import load_model, save_model
from mpltools.data import predictions
from mpltools.data.codecs import Sample, decode_input
from mpltools.data.filtering import dhash
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardWriter
from mpltools.data.transforms import AugmentSpec, eval_view, to_float_batch
from tests.e2e.helpers import accelerate_launch, mpl

pytestmark = pytest.mark.slow  # trains networks (module fixture); `pytest -m 'not slow'` skips it

CLASSES = 4
RECIPE = """
[data]
labeled = "split/labeled"
val = "split/val"
batch_size = 16
workers = 0
[augment]
kind = "cifar"
[model]
name = "small_cnn"
kwargs = { width = 8 }
[method]
name = "supervised"
[student]
lr = 0.1
[schedule]
steps = 40
[runtime]
log_every = 20
"""


def _png(array: np.ndarray, level: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A trained 4-class checkpoint, a validation set, and a labelled pool of 3 shards with planted copies
    of validation images: 3 byte-identical, 1 re-encoded at another PNG level, 1 slightly brightened."""
    root = tmp_path_factory.mktemp("filter")
    mpl(
        "data",
        "import",
        "synthetic",
        "--num-samples",
        "420",
        "--num-classes",
        CLASSES,
        "--image-size",
        "16",
        "--seed",
        "0",
        "--out",
        root / "all",
        cwd=root,
    )
    mpl("data", "split", root / "all", "--labeled-per-class", "15", "--val-per-class", "10", "--out", root / "split", cwd=root)
    (root / "sup.toml").write_text(RECIPE)
    mpl("train", "sup.toml", "--out", "runs/sup", cwd=root)
    val = list(open_shard_set(root / "split/val").samples())
    writer = ShardWriter(
        root / "pool",
        input_spec=open_shard_set(root / "split/val").input_spec,
        classes=[f"class{c}" for c in range(CLASSES)],
        labeled=True,
        provenance={},
        max_per_shard=130,
    )
    for i, s in enumerate(open_shard_set(root / "split/unlabeled").samples()):
        writer.write(Sample(s.key, s.ext, s.data, i % CLASSES))
    for j in range(3):
        writer.write(Sample(f"copy{j}", "png", val[j].data, 0))
    pixels = decode_input(val[3])
    reencoded = _png(pixels, 9)
    assert reencoded != val[3].data
    writer.write(Sample("reencoded", "png", reencoded, 1))
    rng = np.random.default_rng(0)
    near = np.clip(decode_input(val[4]).astype(int) + 2 + rng.integers(0, 2, pixels.shape), 0, 255).astype(np.uint8)
    writer.write(Sample("nearcopy", "png", _png(near, 1), 2))
    writer.close()
    assert len(open_shard_set(root / "pool").shard_paths) == 3
    return root


def _scores(ckpt: Path, location: Path) -> dict[str, np.ndarray]:
    model, meta = load_model(ckpt)
    aug = AugmentSpec(kind=meta.augment["kind"], image_size=meta.augment["image_size"])
    samples = list(open_shard_set(location).samples())
    x = to_float_batch(
        torch.from_numpy(np.stack([eval_view(decode_input(s), aug) for s in samples])),
        meta.normalisation["mean"],
        meta.normalisation["std"],
    )
    with torch.no_grad():
        probs = model.eval()(x).softmax(1).numpy()
    return {s.key: p for s, p in zip(samples, probs)}


def _read(location: Path) -> dict[str, Sample]:
    shards = open_shard_set(location)
    assert shards.labeled is False
    return {s.key: s for s in shards.samples()}


def _filter(run_cli, work, out, *args):
    r = run_cli(
        "data",
        "filter-unlabeled",
        work / "pool",
        "--model",
        work / "runs/sup/student.safetensors",
        "--out",
        work / out,
        "--force",
        "--json",
        *args,
    )
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_top_k_keeps_exactly_the_k_most_confident_of_each_predicted_class(run_cli, work):
    report = _filter(run_cli, work, "top20", "--top-k", "20", "--batch-size", "32")
    probs = _scores(work / "runs/sup/student.safetensors", work / "pool")
    kept = _read(work / "top20")
    pool = {s.key: s for s in open_shard_set(work / "pool").samples()}
    pred = {k: int(p.argmax()) for k, p in probs.items()}
    for c in range(CLASSES):
        members = [k for k in probs if pred[k] == c]
        mine = [k for k in kept if pred[k] == c]
        assert len(mine) == min(20, len(members)) == report["per_class_kept"][c]
        if len(members) > 20:  # the kept ones are the most confident (up to float noise between batchings)
            worst_kept = min(probs[k][c] for k in mine)
            best_dropped = max(probs[k][c] for k in members if k not in kept)
            assert worst_kept >= best_dropped - 1e-5
    assert sum(report["per_class_kept"]) == len(kept) == report["num_samples"]
    assert any(len([k for k in probs if pred[k] == c]) > 20 for c in range(CLASSES))  # the rule really cut
    for key, sample in kept.items():  # original bytes, no label, no extras
        assert sample.data == pool[key].data and sample.label is None and not sample.extras
    order = [k for k in pool if k in kept]
    assert list(kept) == order  # the input set's order
    manifest = json.loads((work / "top20/manifest.json").read_text())
    prov = manifest["provenance"]
    assert prov["rule"]["top_k"] == 20 and prov["rule"]["threshold"] is None and prov["rule"]["balance"] is False
    assert prov["checkpoint_sha256"] == report["checkpoint_sha256"] and len(prov["checkpoint_sha256"]) == 64
    assert prov["per_class_kept"] == report["per_class_kept"] and manifest["classes"] == [f"class{c}" for c in range(CLASSES)]


def test_threshold_keeps_exactly_the_confident_images(run_cli, work):
    probs = _scores(work / "runs/sup/student.safetensors", work / "pool")
    conf = {k: float(p.max()) for k, p in probs.items()}
    t = float(np.median(list(conf.values())))
    report = _filter(run_cli, work, "thr", "--threshold", str(t))
    kept = set(_read(work / "thr"))
    expected = {k for k, v in conf.items() if v >= t}
    assert all(abs(conf[k] - t) < 1e-5 for k in kept ^ expected)
    assert 0 < len(kept) < len(conf) and report["below_threshold"] == len(conf) - len(kept)


def test_balance_duplicates_small_classes_up_to_k(run_cli, work):
    k = 120  # more than any class has: every class is upsampled
    report = _filter(run_cli, work, "bal", "--top-k", str(k), "--threshold", "0.3", "--balance", "--seed", "3")
    probs = _scores(work / "runs/sup/student.safetensors", work / "pool")
    out = _read(work / "bal")
    originals = {key: s for key, s in out.items() if "-dup" not in key}
    per_class = np.zeros(CLASSES, int)
    for key, s in out.items():
        base = key.split("-dup")[0]
        assert s.data == originals[base].data
        per_class[int(probs[base].argmax())] += 1
    present = [c for c in range(CLASSES) if report["per_class_kept"][c] > 0]
    assert per_class.tolist() == report["per_class_written"] == [k if c in present else 0 for c in range(CLASSES)]
    assert any(0 < n < k for n in report["per_class_kept"])  # something was really duplicated
    for key in out:
        if "-dup" in key:
            n = int(key.split("-dup")[1])
            assert n >= 1 and (n == 1 or f"{key.split('-dup')[0]}-dup{n - 1}" in out)
    copies = {b: sum(1 for key in out if key.split("-dup")[0] == b) for b in originals}
    for c in present:
        counts = [copies[b] for b in originals if int(probs[b].argmax()) == c]
        assert max(counts) - min(counts) <= 1  # K // n or K // n + 1 each
    prov = json.loads((work / "bal/manifest.json").read_text())["provenance"]
    assert prov["rule"] == {**prov["rule"], "top_k": k, "threshold": 0.3, "balance": True, "seed": 3}


def test_exact_and_near_duplicates_of_the_evaluation_set_are_dropped(run_cli, work):
    report = _filter(run_cli, work, "dedup", "--top-k", "1000", "--exclude", work / "split/val")
    kept = set(_read(work / "dedup"))
    assert not {"copy0", "copy1", "copy2", "reencoded"} & kept and "nearcopy" in kept
    assert report["duplicates_dropped"]["exact"] == 4 and report["duplicates_dropped"]["near"] == 0
    assert {e["key"] for e in report["duplicates_dropped"]["examples"]} == {"copy0", "copy1", "copy2", "reencoded"}

    report = _filter(
        run_cli,
        work,
        "dedup_near",
        "--top-k",
        "1000",
        "--exclude",
        work / "split/val",
        "--near-duplicates",
        "--phash-distance",
        "4",
    )
    kept_near = set(_read(work / "dedup_near"))
    assert "nearcopy" not in kept_near
    val_hashes = np.array([dhash(decode_input(s)) for s in open_shard_set(work / "split/val").samples()], np.uint64)
    pool = {s.key: s for s in open_shard_set(work / "pool").samples()}
    near = {k for k in kept if np.bitwise_count(val_hashes ^ np.uint64(dhash(decode_input(pool[k])))).min() <= 4}
    assert "nearcopy" in near and kept_near == kept - near
    assert report["duplicates_dropped"]["near"] == len(near) and report["duplicates_dropped"]["exact"] == 4
    prov = json.loads((work / "dedup_near/manifest.json").read_text())["provenance"]["duplicates_dropped"]
    assert prov["exact"] == 4 and prov["near"] == len(near) and prov["phash_distance"] == 4


def test_store_topk_stores_the_checkpoints_top_classes(run_cli, work):
    _filter(run_cli, work, "topk", "--top-k", "5", "--store-topk", "3")
    probs = _scores(work / "runs/sup/student.safetensors", work / "pool")
    out = _read(work / "topk")
    assert json.loads((work / "topk/manifest.json").read_text())["extras"] == ["topk.npy"]
    for key, s in out.items():
        stored = predictions.load(s.extras["topk.npy"], key)
        assert stored.dtype == predictions.TOPK_DTYPE and len(stored) == 3
        assert stored["index"].tolist() == np.argsort(-probs[key])[:3].tolist()
        assert stored["prob"] == pytest.approx(probs[key][stored["index"]], abs=1e-5)


def test_two_processes_write_byte_identical_output(work):
    # The pool has 3 shards: process 0 scores shards 0 and 2, process 1 shard 1.
    args = [
        "data",
        "filter-unlabeled",
        "pool",
        "--model",
        "runs/sup/student.safetensors",
        "--top-k",
        "25",
        "--threshold",
        "0.3",
        "--balance",
        "--store-topk",
        "2",
        "--exclude",
        "split/val",
        "--near-duplicates",
        "--batch-size",
        "16",
        "--force",
    ]
    two = accelerate_launch("-m", "mpltools", *args, "--out", "two", cwd=work)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.strip().splitlines() == ["two"]  # printed once
    one = mpl(*args, "--workers", "2", "--out", "one", cwd=work)  # and decoding in 2 worker processes
    assert one.stdout.strip() == "one"
    a, b = (json.loads((work / d / "manifest.json").read_text()) for d in ("one", "two"))
    a["provenance"].pop("command"), b["provenance"].pop("command")
    assert a == b and a["num_samples"] > 0 and a["provenance"]["duplicates_dropped"]["exact"] == 4
    for shard in a["shards"]:
        assert (work / "one" / shard["name"]).read_bytes() == (work / "two" / shard["name"]).read_bytes()


def test_model_path_from_stdin_and_only_the_path_on_stdout(work):
    r = mpl(
        "data",
        "filter-unlabeled",
        "pool",
        "--model",
        "-",
        "--top-k",
        "3",
        "--out",
        "stdin_out",
        cwd=work,
        stdin="runs/sup/student.safetensors\n",
    )
    assert r.stdout == "stdin_out\n"
    assert open_shard_set(work / "stdin_out").num_samples <= 3 * CLASSES


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--top-k", "0"], 2, "--top-k must be at least 1"),
        (["--threshold", "1.5"], 2, "[0, 1]"),
        (["--threshold", "-0.1"], 2, "[0, 1]"),
        ([], 2, "say what to keep"),
        (["--threshold", "0.5", "--balance"], 2, "needs --top-k"),
        (["--top-k", "3", "--phash-distance", "99"], 2, "--phash-distance"),
        (["--top-k", "3", "--store-topk", "9"], 2, "more than the checkpoint's 4 classes"),
    ],
)
def test_bad_rules_exit_2_and_write_nothing(run_cli, work, args, code, needle):
    r = run_cli(
        "data",
        "filter-unlabeled",
        work / "pool",
        "--model",
        work / "runs/sup/student.safetensors",
        "--out",
        work / "bad_rule",
        *args,
    )
    assert r.exit_code == code and needle in r.stderr
    assert not (work / "bad_rule").exists() and not list(work.glob(".bad_rule.tmp-*"))


def test_checkpoints_that_do_not_fit_the_data_are_refused(run_cli, work, tmp_path):
    ckpt = work / "runs/sup/student.safetensors"
    mpl(
        "data",
        "import",
        "synthetic",
        "--num-samples",
        "20",
        "--num-classes",
        "3",
        "--image-size",
        "16",
        "--out",
        tmp_path / "c3",
        cwd=work,
    )
    mpl(
        "data",
        "import",
        "synthetic",
        "--num-samples",
        "20",
        "--num-classes",
        CLASSES,
        "--image-size",
        "20",
        "--out",
        tmp_path / "s20",
        cwd=work,
    )
    model, meta = load_model(ckpt)
    meta.classes = ["cat", "dog", "cow", "hen"]
    save_model(tmp_path / "renamed.safetensors", model, meta)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(ckpt.read_bytes()[:-100])
    cases = [
        (tmp_path / "c3", ckpt, "predicts 4 classes"),
        (tmp_path / "s20", ckpt, "shape"),
        (work / "pool", tmp_path / "renamed.safetensors", "--ignore-data-classes"),
        (work / "pool", truncated, str(truncated)),
        (work / "pool", tmp_path / "missing.safetensors", "does not exist"),
    ]
    for data, model_path, needle in cases:
        r = run_cli("data", "filter-unlabeled", data, "--model", model_path, "--top-k", "3", "--out", tmp_path / "out")
        assert r.exit_code == 1 and needle in r.stderr, (data, model_path, r.stderr)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    r = run_cli(
        "data",
        "filter-unlabeled",
        work / "pool",
        "--model",
        tmp_path / "renamed.safetensors",
        "--top-k",
        "3",
        "--ignore-data-classes",
        "--out",
        tmp_path / "out",
        "--json",
    )
    assert r.exit_code == 0 and json.loads((tmp_path / "out/manifest.json").read_text())["classes"] == [
        "cat",
        "dog",
        "cow",
        "hen",
    ]


def test_existing_output_is_kept_and_a_failure_mid_write_leaves_nothing(run_cli, work, monkeypatch):
    (work / "exists").mkdir()
    (work / "exists/keep.txt").write_text("mine")
    top3 = ["data", "filter-unlabeled", work / "pool", "--model", work / "runs/sup/student.safetensors", "--top-k", "3"]
    r = run_cli(*top3, "--out", work / "exists")
    assert r.exit_code == 1 and "--force" in r.stderr and (work / "exists/keep.txt").read_text() == "mine"

    calls = {"n": 0}
    original = ShardWriter.write

    def failing(self, sample):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return original(self, sample)

    monkeypatch.setattr(ShardWriter, "write", failing)
    r = run_cli(*top3, "--out", work / "half")
    assert r.exit_code == 1 and "the disk is full" in r.stderr and str(work / "half") in r.stderr
    assert not (work / "half").exists() and not list(work.glob(".half.tmp-*"))
    shutil.rmtree(work / "exists")

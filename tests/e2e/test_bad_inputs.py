"""A catalogue of bad inputs through the real CLI (in-process CliRunner).

Each case asserts the exit code, that the message names the offending file or key, that there is
no traceback, and that nothing was left behind (no run folder, stub, temp file; a previous good
output stays byte-identical). The tiny world (TwoMoon vectors, 8x8 grey images, two checkpoints)
is built once per module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.e2e.helpers import REPO, TWOMOON, cli, corrupt_shards, edit_manifest, ok, sets, tree, twomoon_split, with_weights

REDUCED = str(REPO / "recipes/tiny/reduced_b7_yfcc.toml")
VECTOR_STUDENT = sets(
    "augment.kind=none", "augment.image_size=0", "augment.normalisation=none", "model.name=mlp", "model.kwargs={}"
)


def _image_set(folder: Path, n: int, size: int = 8) -> None:
    from mpltools.data.codecs import InputSpec, Sample, encode_png
    from mpltools.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    w = ShardWriter(
        folder,
        input_spec=InputSpec("image", "png", (size, size, 1)),
        classes=["a", "b"],
        labeled=True,
        provenance={"test": "bad_inputs"},
    )
    for i in range(n):
        w.write(Sample(f"s{i:03d}", "png", encode_png(rng.integers(0, 255, (size, size, 1), dtype=np.uint8)), i % 2))
    w.close()


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad")
    split = twomoon_split(root)
    parts = {k: str(split / k) for k in ("labeled", "unlabeled", "val")}
    base = sets(*(f"data.{k}={v}" for k, v in parts.items()), "schedule.steps=2", "eval.every=0")
    ok("train", TWOMOON, *base, "--set", "method.name=supervised", "--out", root / "run")
    _image_set(root / "img", 8)
    _image_set(root / "empty", 0)
    images = sets(f"data.labeled={root / 'img'}", "data.unlabeled=", "data.val=", "method.name=supervised")
    ok(
        "train",
        TWOMOON,
        *images,
        *sets("model.name=small_cnn", "model.kwargs={}", "schedule.steps=1", "data.batch_size=4"),
        "--out",
        root / "imgrun",
    )
    ck = root / "run/student.safetensors"
    labeled = Path(parts["labeled"])
    d = dict(
        root=root,
        base=base,
        ck=str(ck),
        img=str(root / "img"),
        imgck=str(root / "imgrun/student.safetensors"),
        empty=str(root / "empty"),
        **parts,
    )
    d["nan"] = with_weights(ck, root / "nan.safetensors", lambda t: next(iter(t.values())).fill_(float("nan")))
    (root / "garbage.safetensors").write_bytes(b"\x00not a checkpoint" * 10)
    d["garbage"] = str(root / "garbage.safetensors")
    d["neg"] = edit_manifest(
        labeled,
        root / "negn",
        lambda m: (m.update(num_samples=-1), [s.update(count=0) for s in m["shards"]], m["shards"][0].update(count=-1)),
    )
    d["badsha"] = edit_manifest(labeled, root / "badsha", lambda m: m["shards"][0].update(sha256="xyz"))
    d["dupcls"] = edit_manifest(labeled, root / "dupcls", lambda m: m.update(classes=[m["classes"][0]] * len(m["classes"])))
    d["badshape"] = edit_manifest(labeled, root / "badshape", lambda m: m["input"].update(shape=[-2]))
    (root / "notjson").mkdir()
    (root / "notjson/manifest.json").write_text("{ not json")
    d["notjson"] = str(root / "notjson")
    (root / "broken.toml").write_text("[data\nlabeled = ")
    d["broken"] = str(root / "broken.toml")
    d["corrupt"] = corrupt_shards(labeled, root / "corrupt")
    d["corrupt_val"] = corrupt_shards(Path(parts["val"]), root / "corrupt_val")
    for part in ("labeled", "unlabeled"):  # Reduced MPL's prediction sets of the TwoMoon student
        ok("reduced", "predict", ck, "--data", parts[part], "--dtype", "float32", "--out", root / f"pred_{part}")
    d["pred_labeled"] = str(root / "pred_labeled")
    d["pred_corrupt"] = corrupt_shards(root / "pred_unlabeled", root / "pred_corrupt")
    (root / "badtree/a").mkdir(parents=True)
    (root / "badtree/b").mkdir()
    for i in range(3):
        (root / f"badtree/b/ok{i}.png").write_bytes(_png_bytes())
    (root / "badtree/a/broken.png").write_bytes(b"\x89PNG not really an image")
    d["badtree"] = str(root / "badtree")
    (root / "preds").mkdir()
    (root / "preds/keep.txt").write_text("previous good output")
    d["preds"] = str(root / "preds")
    return d


def _png_bytes() -> bytes:
    from mpltools.data.codecs import encode_png

    return encode_png(np.zeros((8, 8, 1), dtype=np.uint8))


# (id, argv as a function of the world, exit code, what the message must name (a world key or literal text))
CASES = [
    # --- train: recipe values (exit 2, the key named), nothing written
    (
        "train-print-config-bad-model",
        lambda w: ["train", TWOMOON, "--set", "model.name=resnet5", "--print-config"],
        2,
        "model.name",
    ),
    ("train-bad-model", lambda w: ["train", TWOMOON, *w["base"], "--set", "model.name=resnet5"], 2, "model.name"),
    (
        "train-bad-teacher-model",
        lambda w: ["train", TWOMOON, *w["base"], "--set", "model.teacher_name=nope"],
        2,
        "model.teacher_name",
    ),
    (
        "train-negative-mpl-weight",
        lambda w: ["train", TWOMOON, *w["base"], "--set", "method.mpl_weight=-1"],
        2,
        "method.mpl_weight",
    ),
    (
        "train-negative-uda-weight",
        lambda w: ["train", TWOMOON, *w["base"], "--set", "method.uda_weight=-1"],
        2,
        "method.uda_weight",
    ),
    (
        "train-uda-threshold",
        lambda w: ["train", TWOMOON, *w["base"], "--set", "method.uda_threshold=2"],
        2,
        "method.uda_threshold",
    ),
    ("train-eval-batch-0", lambda w: ["train", TWOMOON, *w["base"], "--set", "eval.batch_size=0"], 2, "eval.batch_size"),
    ("train-eval-every-neg", lambda w: ["train", TWOMOON, *w["base"], "--set", "eval.every=-1"], 2, "eval.every"),
    ("train-log-every-0", lambda w: ["train", TWOMOON, *w["base"], "--set", "runtime.log_every=0"], 2, "runtime.log_every"),
    ("train-unknown-key", lambda w: ["train", TWOMOON, *w["base"], "--set", "method.nope=1"], 2, "method.nope"),
    ("train-missing-recipe", lambda w: ["train", str(w["root"] / "nope.toml")], 2, "nope.toml"),
    ("train-broken-recipe", lambda w: ["train", w["broken"]], 2, "broken.toml"),
    # --- train: data and checkpoints (exit 1, the file named), no stub run folder
    ("train-empty-val", lambda w: ["train", TWOMOON, *w["base"], "--set", f"data.val={w['empty']}"], 1, "empty"),
    (
        "train-empty-labeled",
        lambda w: ["train", TWOMOON, *w["base"], "--set", "method.name=supervised", "--set", f"data.labeled={w['empty']}"],
        1,
        "empty",
    ),
    ("train-negative-count", lambda w: ["train", TWOMOON, *w["base"], "--set", f"data.labeled={w['neg']}"], 1, "negn"),
    ("train-manifest-not-json", lambda w: ["train", TWOMOON, *w["base"], "--set", f"data.labeled={w['notjson']}"], 1, "notjson"),
    (
        "train-missing-labeled",
        lambda w: ["train", TWOMOON, *w["base"], "--set", f"data.labeled={w['root'] / 'nowhere'}"],
        1,
        "nowhere",
    ),
    (
        "train-pl-nan-teacher",
        lambda w: [
            "train",
            TWOMOON,
            *w["base"],
            *sets("method.name=pseudo-label", f"method.teacher_checkpoint={w['nan']}"),
        ],
        1,
        "nan.safetensors",
    ),
    (
        "train-pl-missing-teacher",
        lambda w: [
            "train",
            TWOMOON,
            *w["base"],
            *sets("method.name=pseudo-label", f"method.teacher_checkpoint={w['root'] / 'gone.safetensors'}"),
        ],
        1,
        "gone.safetensors",
    ),
    (
        "train-pl-garbage-teacher",
        lambda w: [
            "train",
            TWOMOON,
            *w["base"],
            *sets("method.name=pseudo-label", f"method.teacher_checkpoint={w['garbage']}"),
        ],
        1,
        "garbage.safetensors",
    ),
    (
        "train-pl-image-teacher-vector-student",
        lambda w: [
            "train",
            TWOMOON,
            *w["base"],
            *sets("method.name=pseudo-label", f"method.teacher_checkpoint={w['imgck']}"),
        ],
        1,
        "imgrun",
    ),
    # --- eval
    ("eval-empty-set", lambda w: ["eval", w["ck"], "--data", w["empty"]], 1, "empty"),
    ("eval-empty-set-json", lambda w: ["eval", w["ck"], "--data", w["empty"], "--json"], 1, "empty"),
    ("eval-negative-count", lambda w: ["eval", w["ck"], "--data", w["neg"]], 1, "negn"),
    ("eval-bad-sha-field", lambda w: ["eval", w["ck"], "--data", w["badsha"]], 1, "badsha"),
    ("eval-dup-classes", lambda w: ["eval", w["ck"], "--data", w["dupcls"]], 1, "dupcls"),
    ("eval-bad-shape", lambda w: ["eval", w["ck"], "--data", w["badshape"]], 1, "badshape"),
    ("eval-not-json", lambda w: ["eval", w["ck"], "--data", w["notjson"]], 1, "notjson"),
    ("eval-missing-data", lambda w: ["eval", w["ck"], "--data", w["root"] / "nowhere"], 1, "nowhere"),
    ("eval-nan-checkpoint", lambda w: ["eval", w["nan"], "--data", w["val"]], 1, "nan.safetensors"),
    ("eval-garbage-checkpoint", lambda w: ["eval", w["garbage"], "--data", w["val"]], 1, "garbage.safetensors"),
    ("eval-missing-checkpoint", lambda w: ["eval", w["root"] / "gone.safetensors", "--data", w["val"]], 1, "gone.safetensors"),
    ("eval-image-ckpt-on-vectors", lambda w: ["eval", w["imgck"], "--data", w["val"]], 1, "imgrun"),
    ("eval-vector-ckpt-on-images", lambda w: ["eval", w["ck"], "--data", w["img"]], 1, "student.safetensors"),
    ("eval-batch-size-0", lambda w: ["eval", w["ck"], "--data", w["val"], "--batch-size", "0"], 2, "batch-size"),
    ("eval-predictions-exist", lambda w: ["eval", w["ck"], "--data", w["val"], "--predictions", w["preds"]], 1, "preds"),
    # --- finetune
    (
        "finetune-lr-negative",
        lambda w: ["finetune", w["ck"], "--labeled", w["labeled"], "--set", "finetune.lr=-1"],
        2,
        "finetune.lr",
    ),
    (
        "finetune-batch-0",
        lambda w: ["finetune", w["ck"], "--labeled", w["labeled"], "--set", "finetune.batch_size=0"],
        2,
        "finetune.batch_size",
    ),
    (
        "finetune-steps-0",
        lambda w: ["finetune", w["ck"], "--labeled", w["labeled"], "--set", "finetune.steps=0"],
        2,
        "finetune.steps",
    ),
    (
        "finetune-momentum",
        lambda w: ["finetune", w["ck"], "--labeled", w["labeled"], "--set", "finetune.momentum=1.5"],
        2,
        "finetune.momentum",
    ),
    ("finetune-ckpt-vs-image-data", lambda w: ["finetune", w["ck"], "--labeled", w["img"]], 1, "student.safetensors"),
    ("finetune-image-ckpt-vs-vectors", lambda w: ["finetune", w["imgck"], "--labeled", w["labeled"]], 1, "imgrun"),
    ("finetune-nan-checkpoint", lambda w: ["finetune", w["nan"], "--labeled", w["labeled"]], 1, "nan.safetensors"),
    ("finetune-garbage-checkpoint", lambda w: ["finetune", w["garbage"], "--labeled", w["labeled"]], 1, "garbage.safetensors"),
    ("finetune-empty-labeled", lambda w: ["finetune", w["ck"], "--labeled", w["empty"]], 1, "empty"),
    ("finetune-negative-count", lambda w: ["finetune", w["ck"], "--labeled", w["neg"]], 1, "negn"),
    # --- failing mid-run, after the output folder exists (item 1): a new run leaves nothing, nor the parents of --out
    (
        "train-shard-corrupt-mid-run",
        lambda w: ["train", TWOMOON, *w["base"], "--set", "method.name=supervised", "--set", f"data.labeled={w['corrupt']}"],
        1,
        "corrupt",
    ),
    (
        "train-nonfinite-before-first-checkpoint",
        lambda w: [
            "train",
            TWOMOON,
            *w["base"],
            *sets("method.name=supervised", "student.lr=1e38", "schedule.steps=4"),
        ],
        1,
        "not finite",
    ),
    (
        "train-mpl-shard-corrupt-mid-run",
        lambda w: ["train", TWOMOON, *w["base"], "--set", f"data.unlabeled={w['corrupt']}"],
        1,
        "corrupt",
    ),
    (
        "reduced-train-prediction-shard-corrupt-mid-run",
        lambda w: [
            "reduced",
            "train",
            REDUCED,
            *sets(f"data.labeled={w['pred_labeled']}", f"data.unlabeled={w['pred_corrupt']}", "data.val="),
            *VECTOR_STUDENT,
            "--out",
            "OUT",
        ],
        1,
        "pred_corrupt",
    ),
    ("finetune-shard-corrupt-mid-run", lambda w: ["finetune", w["ck"], "--labeled", w["corrupt"]], 1, "corrupt"),
    (
        "eval-predictions-shard-corrupt",
        lambda w: ["eval", w["ck"], "--data", w["corrupt_val"], "--predictions", "OUT"],
        1,
        "corrupt_val",
    ),
    ("split-shard-corrupt", lambda w: ["data", "split", w["corrupt"], "--labeled-per-class", "1", "--out", "OUT"], 1, "corrupt"),
    (
        "import-imagefolder-broken-image",
        lambda w: ["data", "import", "imagefolder", w["badtree"], "--out", "OUT"],
        1,
        "broken.png",
    ),
    (
        "filter-unlabeled-shard-corrupt",
        lambda w: ["data", "filter-unlabeled", w["corrupt"], "--model", w["ck"], "--top-k", "1", "--out", "OUT"],
        1,
        "corrupt",
    ),
    # --- data info
    ("info-negative-count", lambda w: ["data", "info", w["neg"]], 1, "negn"),
    ("info-dup-classes", lambda w: ["data", "info", w["dupcls"]], 1, "dupcls"),
    ("info-not-json", lambda w: ["data", "info", w["notjson"]], 1, "notjson"),
]


@pytest.mark.parametrize("argv, code, names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(w, tmp_path, argv, code, names):
    out = tmp_path / "deep" / "out"
    args = [out if a == "OUT" else a for a in argv(w)]
    if args[0] in ("train", "finetune") and "--print-config" not in args:
        args = [*args, "--out", out]
    before = tree(w["root"])
    got, text = cli(*args)
    assert got == code, text[-2000:]
    errors = [line for line in text.splitlines() if line.startswith(("error:", "Error", "Usage:", "│", "Invalid"))]
    message = "\n".join(errors) if got != 2 or any(e.startswith("error:") for e in errors) else text
    assert names in message and "Error:" not in message.split("error:", 1)[-1][:40], text[-2000:]
    assert "Traceback" not in text
    assert not (tmp_path / "deep").exists(), "a failed command left its --out (or the parents it created)"
    assert tree(w["root"]) == before, "a failed command changed or left files in its inputs' folders"

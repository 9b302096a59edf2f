"""Samples that do not match their shard set's manifest, through the real CLI (in-process CliRunner).

Every reader decodes through `decode_input(sample, shard, spec)`, so a 16x16 image in an [8, 8, 1]
set, an RGB image in a grey set (or grey in an RGB one), a label outside the classes and a truncated
PNG are refused by `data info --verify`, `eval`, `train` (in memory, and streamed by 0 or 2
DataLoader workers), `finetune`, `data filter-unlabeled` and `reduced predict` (decoding in 0 or 2 workers) with exit 1 and a message naming the
shard file and the sample key, with no traceback and no temp file left. The shards are written by the
project's own ShardWriter (which does not decode), and the label is patched into the tar bytes.

`train` and `finetune` may leave the run folder a new run created (its cleanup is another change);
nothing else may be written or changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.helpers import DIGITS, cli, ok, sets, tree

BAD = "s003"  # the one wrong sample of each bad set


def _image_set(folder: Path, shape=(8, 8, 1), bad=None) -> str:
    """8 labelled samples declared as `shape`; sample s003 gets the image (or bytes) `bad` returns."""
    from mpltools.data.codecs import InputSpec, Sample, encode_png
    from mpltools.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    w = ShardWriter(
        folder, input_spec=InputSpec("image", "png", shape), classes=["a", "b"], labeled=True, provenance={"test": "bad_images"}
    )
    for i in range(8):
        data = encode_png(rng.integers(0, 255, shape, dtype=np.uint8))
        if f"s{i:03d}" == BAD and bad is not None:
            data = bad(data)
        w.write(Sample(f"s{i:03d}", "png", data, i % 2))
    w.close()
    return str(folder)


def _patch_label(folder: Path, label: bytes) -> None:
    """Overwrite s003's one-byte `cls` payload in the tar and re-record the shard's sha256 in the manifest,
    so that the label is the only fault."""
    shard = folder / "shard-000000.tar"
    raw = bytearray(shard.read_bytes())
    header = raw.index(f"{BAD}.cls\0".encode())
    assert raw[header + 512 : header + 513] in (b"0", b"1")
    raw[header + 512 : header + 513] = label
    shard.write_bytes(bytes(raw))
    m = json.loads((folder / "manifest.json").read_text())
    m["shards"][0]["sha256"] = hashlib.sha256(raw).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(m))


def _png(shape):
    return lambda _: __import__("mpltools.data.codecs", fromlist=["encode_png"]).encode_png(np.full(shape, 7, np.uint8))


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("badimg")
    good = _image_set(root / "good")
    one_step = sets(f"data.labeled={good}", "data.unlabeled=", "data.val=", "method.name=supervised", "schedule.steps=1")
    ok("train", DIGITS, *one_step, "--set", "data.batch_size=4", "--out", root / "run")
    faulty = dict(
        big=_image_set(root / "big", bad=_png((16, 16, 1))),  # 16x16 in an [8, 8, 1] set
        rgb=_image_set(root / "rgb", bad=_png((8, 8, 3))),  # RGB in a grey set
        grey=_image_set(root / "grey", shape=(8, 8, 3), bad=_png((8, 8, 1))),  # grey in an RGB set
        trunc=_image_set(root / "trunc", bad=lambda data: data[: len(data) // 2]),  # a truncated PNG
        label=_image_set(root / "label"),  # label 7 of 2 classes
    )
    _patch_label(root / "label", b"7")
    return dict(root=root, ck=str(root / "run/student.safetensors"), **faulty)


TRAIN = sets("data.unlabeled=", "data.val=", "method.name=supervised", "schedule.steps=2", "data.batch_size=4")
STREAMED = sets("data.in_memory=no", "data.workers=2")

# What each fault's message must say besides the shard file and key.
SAYS = {
    "big": ["[16, 16, 1] (16x16 grey)", "[8, 8, 1] (8x8 grey)"],
    "rgb": ["[8, 8, 3] (8x8 RGB)", "[8, 8, 1]"],
    "grey": ["[8, 8, 1] (8x8 grey)", "declares input shape [8, 8, 3]"],
    "trunc": ["cannot be decoded as png"],
    "label": ["label 7, outside 0..1"],
}

# (id, fault, argv as a function of the world and the output path)
CASES = [
    *[(f"info-verify-{f}", f, lambda w, o, f=f: ["data", "info", w[f], "--verify"]) for f in SAYS],
    *[(f"eval-{f}", f, lambda w, o, f=f: ["eval", w["ck"], "--data", w[f]]) for f in ("big", "rgb", "trunc", "label")],
    ("eval-json-big", "big", lambda w, o: ["eval", w["ck"], "--data", w["big"], "--json"]),
    ("eval-predictions-rgb", "rgb", lambda w, o: ["eval", w["ck"], "--data", w["rgb"], "--predictions", o]),
    *[(f"train-{f}", f, lambda w, o, f=f: ["train", DIGITS, "--set", f"data.labeled={w[f]}", *TRAIN, "--out", o]) for f in SAYS],
    *[
        (
            f"train-streamed-2-workers-{f}",
            f,
            lambda w, o, f=f: ["train", DIGITS, "--set", f"data.labeled={w[f]}", *TRAIN, *STREAMED, "--out", o],
        )
        for f in SAYS
    ],
    (
        "train-streamed-0-workers-big",
        "big",
        lambda w, o: [
            "train",
            DIGITS,
            "--set",
            f"data.labeled={w['big']}",
            *TRAIN,
            *sets("data.in_memory=no", "data.workers=0"),
            "--out",
            o,
        ],
    ),
    *[
        (
            f"finetune-{f}",
            f,
            lambda w, o, f=f: [
                "finetune",
                w["ck"],
                "--labeled",
                w[f],
                *sets("finetune.steps=2", "finetune.batch_size=4"),
                "--out",
                o,
            ],
        )
        for f in ("big", "rgb", "trunc", "label")
    ],
    *[
        (
            f"filter-unlabeled-{f}",
            f,
            lambda w, o, f=f: ["data", "filter-unlabeled", w[f], "--model", w["ck"], "--top-k", "2", "--out", o],
        )
        for f in ("big", "rgb", "trunc", "label")
    ],
    *[
        (f"reduced-predict-{f}", f, lambda w, o, f=f: ["reduced", "predict", w["ck"], "--data", w[f], "--out", o])
        for f in ("rgb", "trunc")
    ],
    (
        "reduced-predict-2-workers-big",
        "big",
        lambda w, o: ["reduced", "predict", w["ck"], "--data", w["big"], "--workers", "2", "--out", o],
    ),
    (
        "filter-unlabeled-2-workers-big",
        "big",
        lambda w, o: ["data", "filter-unlabeled", w["big"], "--model", w["ck"], "--top-k", "2", "--workers", "2", "--out", o],
    ),
]


@pytest.mark.parametrize("fault, argv", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_image(w, tmp_path, fault, argv):
    out = tmp_path / "deep" / "out"
    args = argv(w, out)
    before = tree(w["root"])
    code, text = cli(*args)
    assert code == 1, text[-2000:]
    errors = "\n".join(line for line in text.splitlines() if line.startswith(("error:", "  - ")))
    shard = f"{w[fault]}/shard-000000.tar"
    assert f"{shard}: sample '{BAD}'" in errors, text[-2000:]
    assert all(s in errors for s in SAYS[fault]), text[-2000:]
    assert "Traceback" not in text and "Caught " not in text and "DataLoader worker process" not in text, text[-2000:]
    assert tree(w["root"]) == before, "a failed command changed or left files in its inputs' folders"
    if args[0] in ("train", "finetune"):  # a new run's folder may stay (another change removes it), no temp file
        left = [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name]
        assert not left, left
    else:
        assert not (tmp_path / "deep").exists(), "a failed command left its output (or the parents it created)"


def test_verify_lists_the_first_problems_and_counts_all(tmp_path):
    """A set whose every image has the wrong size: each sample is named up to 20, the rest are counted."""
    from mpltools.data.codecs import InputSpec, Sample, encode_png
    from mpltools.data.shards import ShardWriter

    w = ShardWriter(
        tmp_path / "s",
        input_spec=InputSpec("image", "png", (8, 8, 1)),
        classes=["a", "b"],
        labeled=True,
        provenance={},
        max_per_shard=10,
    )
    for i in range(25):
        w.write(Sample(f"k{i:02d}", "png", encode_png(np.zeros((4, 4, 1), np.uint8)), i % 2))
    w.close()
    code, text = cli("data", "info", tmp_path / "s", "--verify")
    assert code == 1 and "Traceback" not in text
    assert "verify      FAILED: 25 problem(s)" in text and "... and 5 more (the first 20 are listed)" in text
    assert f"{tmp_path / 's'}/shard-000002.tar: sample 'k24'" not in text  # listed only up to 20
    assert f"{tmp_path / 's'}/shard-000001.tar: sample 'k19' decodes to shape [4, 4, 1] (4x4 grey)" in text
    assert "error: " in text and "25 problem(s) found" in text
    code, js = cli("data", "info", tmp_path / "s", "--verify", "--json")
    report = json.loads(js[js.index("{") : js.rindex("}") + 1])
    assert report["problem_count"] == 25 and len(report["problems"]) == 20 and report["verified"] is False


def test_good_set_still_verifies_and_evaluates(w):
    code, text = cli("data", "info", w["root"] / "good", "--verify")
    assert code == 0 and "verify      OK" in text, text[-2000:]
    code, text = cli("eval", w["ck"], "--data", w["root"] / "good", "--json")
    assert code == 0, text[-2000:]

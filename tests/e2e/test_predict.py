"""`mpl predict`: top-k classes and probabilities for shard sets, image files, folders and paths on stdin, equal to
what `mpl eval --predictions` computes on the same images; atomic --out, no overwrite, errors naming the file."""

from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.helpers import REPO, mpl
from tests.e2e.test_api_predict import _tar_samples

DIGITS = "recipes/tiny/digits.toml"
VAL = "data/tiny/digits/split/val"
CKPT = "runs/t/student.safetensors"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A 3-step digits student, `mpl eval --predictions` of it on the val set ({key: probabilities}, in the set's
    order), and that set's images written as PNG files under pngs/ (half of them one folder deeper)."""
    root = tmp_path_factory.mktemp("predict")
    (root / "recipes").symlink_to(REPO / "recipes")
    for line in (REPO / DIGITS).read_text().splitlines():
        if line.startswith("# $ mpl data"):
            mpl(*shlex.split(line[4:])[1:], cwd=root)
    mpl("train", DIGITS, "--out", "runs/t", "--set", "schedule.steps=3", cwd=root)
    mpl("eval", CKPT, "--data", VAL, "--predictions", "preds", "--batch-size", "7", cwd=root)
    expected = {key: np.load(io.BytesIO(m["npy"]), allow_pickle=False) for key, m in _tar_samples(root / "preds").items()}
    for i, (key, members) in enumerate(_tar_samples(root / VAL).items()):
        path = root / "pngs" / ("deeper" if i % 2 else "") / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(members["png"])
    return root, expected


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def _as_dict(record: dict) -> dict[str, np.float32]:
    return dict(zip(record["classes"], np.float32(record["probs"])))


def test_predict_on_a_shard_set_equals_mpl_eval_predictions(work):
    root, expected = work
    r = mpl("predict", CKPT, VAL, "--top-k", "10", "--batch-size", "7", cwd=root)
    records = _lines(r.stdout)
    assert [rec["key"] for rec in records] == list(expected) and {rec["path"] for rec in records} == {VAL}
    for rec in records:
        probs = expected[rec["key"]]
        assert rec["probs"] == sorted(rec["probs"], reverse=True) and len(rec["classes"]) == 10
        assert _as_dict(rec) == {str(i): probs[i] for i in range(10)}, rec["key"]  # bit for bit
    default = _lines(mpl("predict", CKPT, VAL, cwd=root).stdout)  # top 5 by default
    assert [len(rec["classes"]) for rec in default] == [5] * len(expected)
    assert [rec["classes"][0] for rec in default] == [str(int(p.argmax())) for p in expected.values()]


def test_predict_on_png_files_folders_and_stdin_equals_mpl_eval(work):
    root, expected = work
    files = sorted((root / "pngs").rglob("*.png"))
    r = mpl("predict", CKPT, "pngs", "--top-k", "10", "--batch-size", "7", cwd=root)
    records = _lines(r.stdout)
    assert [rec["path"] for rec in records] == [str(f.relative_to(root)) for f in files]  # recursive, sorted
    assert all("key" not in rec for rec in records)
    for rec in records:
        probs = expected[Path(rec["path"]).stem]
        got = _as_dict(rec)
        np.testing.assert_allclose([got[str(i)] for i in range(10)], probs, rtol=0, atol=1e-6)
        assert rec["classes"][0] == str(int(probs.argmax()))
    piped = mpl("predict", CKPT, "-", "--top-k", "10", "--batch-size", "7", cwd=root, stdin="".join(f"{f}\n" for f in files))
    assert [rec["probs"] for rec in _lines(piped.stdout)] == [rec["probs"] for rec in records]
    one = mpl("predict", CKPT, files[3], VAL, "--top-k", "2", cwd=root)  # a file and a shard set, in the order given
    both = _lines(one.stdout)
    assert both[0]["path"] == str(files[3]) and [rec.get("key") for rec in both[1:]] == list(expected)


def test_predict_writes_csv_atomically_and_never_overwrites_without_force(work):
    root, expected = work
    r = mpl("predict", CKPT, VAL, "--out", "out/p.csv", "--top-k", "2", cwd=root)
    assert r.stdout == "out/p.csv\n"
    rows = list(csv.reader((root / "out/p.csv").read_text().splitlines()))
    assert rows[0] == ["path", "key", "class_1", "prob_1", "class_2", "prob_2"]
    assert [row[1] for row in rows[1:]] == list(expected) and all(row[0] == VAL for row in rows[1:])
    assert [row[2] for row in rows[1:]] == [str(int(p.argmax())) for p in expected.values()]
    before = (root / "out/p.csv").read_bytes()
    r = mpl("predict", CKPT, "pngs", "--out", "out/p.csv", cwd=root, check=False)
    assert r.returncode == 1 and "out/p.csv already exists" in r.stderr and "--force" in r.stderr
    assert (root / "out/p.csv").read_bytes() == before
    mpl("predict", CKPT, "pngs", "--out", "out/p.csv", "--format", "jsonl", "--force", cwd=root)
    assert len(_lines((root / "out/p.csv").read_text())) == len(expected)


def test_predict_names_an_unreadable_image_and_writes_nothing(work, tmp_path):
    root, _ = work
    bad = tmp_path / "imgs/b_broken.png"
    bad.parent.mkdir()
    (tmp_path / "imgs/a_good.png").write_bytes(sorted((root / "pngs").rglob("*.png"))[0].read_bytes())
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    r = mpl("predict", CKPT, tmp_path / "imgs", "--out", tmp_path / "p.jsonl", cwd=root, check=False)
    assert r.returncode == 1 and f"{bad} is not a readable image" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p.jsonl").exists() and not list(tmp_path.glob(".p.jsonl*"))
    from PIL import Image

    Image.new("L", (16, 16)).save(tmp_path / "big.png")  # the digits model was trained on 8x8 images
    r = mpl("predict", CKPT, tmp_path / "big.png", cwd=root, check=False)
    assert r.returncode == 1 and f"{tmp_path / 'big.png'}: got an image of 16x16 pixels" in r.stderr


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["nosuch.png"], 1, "nosuch.png does not exist"),
        ([VAL, "--top-k", "0"], 2, "--top-k"),
        ([VAL, "--top-k", "11"], 2, "more than the checkpoint's 10 classes"),
        ([VAL, "--format", "xml"], 2, "--format"),
        ([VAL, "--batch-size", "0"], 2, "--batch-size"),
        (["-", "-"], 2, "may be given once"),
        (["runs"], 1, "holds no image files"),
    ],
)
def test_predict_refusals(work, args, code, needle):
    root, _ = work
    r = mpl("predict", CKPT, *args, cwd=root, check=False, stdin="")
    assert r.returncode == code and needle in r.stderr and r.stdout == "", r.stderr


def test_predict_help_has_an_example(work):
    root, _ = work
    r = mpl("predict", "--help", cwd=root)
    assert "Example:" in r.stdout and "mpl predict runs/" in r.stdout

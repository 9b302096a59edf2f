"""`mpl data import mnist|fashion-mnist FOLDER --part train|test`: the IDX importer, on files the tests write."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mpltools.data.codecs import decode_input
from mpltools.data.idx import FASHION_CLASSES, read_idx
from mpltools.data.opening import open_shard_set

REAL = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(values: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
    return header + values.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.with_name(path.name + ".gz") if gz else path).write_bytes(gzip.compress(data) if gz else data)


def _fake(root: Path, gz: bool, n: dict | None = None) -> dict:
    rng = np.random.default_rng(1)
    parts = {}
    for part, stem in (("train", "train"), ("test", "t10k")):
        count = (n or {"train": 30, "test": 20})[part]
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        _write(root / f"{stem}-images-idx3-ubyte", _idx_bytes(images), gz)
        _write(root / f"{stem}-labels-idx1-ubyte", _idx_bytes(labels), gz)
        parts[part] = (images, labels)
    return parts


def _nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_import_idx_both_parts(run_cli, tmp_path, gz):
    fake = _fake(tmp_path / "raw", gz)
    for part in ("train", "test"):
        code, out, err = run_cli("data", "import", "fashion-mnist", tmp_path / "raw", "--part", part, "--out", tmp_path / part)
        assert code == 0, err
        manifest = json.loads((tmp_path / part / "manifest.json").read_text())
        images, labels = fake[part]
        assert manifest["classes"] == FASHION_CLASSES and manifest["num_samples"] == len(labels)
        assert manifest["input"]["shape"] == [28, 28, 1]
        got = {s.key: (decode_input(s), s.label) for s in open_shard_set(tmp_path / part).samples()}
        assert len(got) == len(labels)
        for key, (image, label) in got.items():
            i = int(key.rsplit("-", 1)[1])
            assert key.startswith(f"fashion-mnist-{part}-")
            assert label == labels[i] and np.array_equal(image[:, :, 0], images[i])


def test_mnist_has_digit_classes(run_cli, tmp_path):
    _fake(tmp_path / "raw", gz=True)
    code, _, err = run_cli("data", "import", "mnist", tmp_path / "raw", "--out", tmp_path / "m")
    assert code == 0, err
    assert json.loads((tmp_path / "m/manifest.json").read_text())["classes"] == [str(c) for c in range(10)]


@pytest.mark.parametrize("damage", ["truncated_gzip", "truncated_raw", "header_only"])
def test_truncated_file_is_named_and_nothing_is_written(run_cli, tmp_path, damage):
    _fake(tmp_path / "raw", gz=damage == "truncated_gzip")
    name = "train-images-idx3-ubyte" + (".gz" if damage == "truncated_gzip" else "")
    target = tmp_path / "raw" / name
    data = target.read_bytes()
    target.write_bytes(data[:10] if damage == "header_only" else data[: len(data) // 2])
    code, out, err = run_cli("data", "import", "fashion-mnist", tmp_path / "raw", "--out", tmp_path / "o")
    assert code == 1 and out == ""
    assert name in err and "truncated" in err and "Traceback" not in err
    _nothing_written(tmp_path / "o")


def test_wrong_magic_is_named(run_cli, tmp_path):
    _fake(tmp_path / "raw", gz=False)
    target = tmp_path / "raw/train-labels-idx1-ubyte"
    target.write_bytes(b"\x00\x00\x08\x03" + target.read_bytes()[4:])  # says idx3 where labels are idx1
    code, _, err = run_cli("data", "import", "mnist", tmp_path / "raw", "--out", tmp_path / "o")
    assert code == 1 and "train-labels-idx1-ubyte" in err and "magic number is 0x00000803" in err
    _nothing_written(tmp_path / "o")


def test_count_mismatch_between_images_and_labels(run_cli, tmp_path):
    _fake(tmp_path / "raw", gz=True)
    _write(tmp_path / "raw/train-labels-idx1-ubyte", _idx_bytes(np.zeros(29, np.uint8)), gz=True)
    code, _, err = run_cli("data", "import", "mnist", tmp_path / "raw", "--out", tmp_path / "o")
    assert code == 1 and "holds 30 images" in err and "holds 29 labels" in err
    _nothing_written(tmp_path / "o")


def test_missing_files_and_bad_part(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("data", "import", "mnist", tmp_path / "empty", "--out", tmp_path / "o")
    assert code == 1 and "train-images-idx3-ubyte[.gz]" in err
    _fake(tmp_path / "raw", gz=True)
    code, _, err = run_cli("data", "import", "mnist", tmp_path / "raw", "--part", "val", "--out", tmp_path / "o")
    assert code == 2 and "--part must be 'train' or 'test'" in err
    _nothing_written(tmp_path / "o")


@pytest.mark.skipif(not (REAL / "t10k-labels-idx1-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(run_cli, tmp_path):
    train = read_idx(REAL / "train-images-idx3-ubyte.gz", 3)
    assert train.shape == (60_000, 28, 28)
    assert np.bincount(read_idx(REAL / "train-labels-idx1-ubyte.gz", 1)).tolist() == [6000] * 10
    code, _, err = run_cli("data", "import", "fashion-mnist", REAL, "--part", "test", "--out", tmp_path / "test")
    assert code == 0, err
    manifest = json.loads((tmp_path / "test/manifest.json").read_text())
    assert manifest["num_samples"] == 10_000 and manifest["class_counts"] == [1000] * 10

"""Importers (mpltools.data.sources): generated data, dataset layouts, the restricted unpickler, bad files."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from mpltools.data.codecs import decode_input
from mpltools.data.sources import RestrictedUnpickler, SourceOptions, load_source, make_synthetic, make_two_moons
from mpltools.errors import MplError, UsageError
from tests import fakes


def _decoded(source):
    """key -> (HWC image or vector, label) of every sample a Source yields."""
    return {s.key: (decode_input(s), s.label) for s in source.samples()}


def _index(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


def test_two_moons_shape_balance_and_geometry():
    x, y = make_two_moons(2000, noise=0.0, seed=0)
    assert x.shape == (2000, 2) and x.dtype == np.float32 and np.bincount(y).tolist() == [1000, 1000]
    outer, inner = x[y == 0], x[y == 1]
    assert np.allclose(np.hypot(*outer.T), 1.0, atol=1e-5)  # upper half circle around (0, 0)
    assert np.allclose(np.hypot(inner[:, 0] - 1, inner[:, 1] - 0.5), 1.0, atol=1e-5)
    assert (outer[:, 1] >= -1e-6).all() and (inner[:, 1] <= 0.5 + 1e-6).all()
    a, _ = make_two_moons(2000, noise=0.1, seed=0)
    assert np.array_equal(a, make_two_moons(2000, noise=0.1, seed=0)[0])
    assert not np.allclose(a, make_two_moons(2000, noise=0.1, seed=1)[0])
    assert abs(np.std(a - x) - 0.1) < 0.01
    assert np.allclose(make_two_moons(10, 0.0, 0, scale=3.0)[0], 3.0 * make_two_moons(10, 0.0, 0)[0])


def test_synthetic_any_size_classes_channels_and_deterministic():
    x, y = make_synthetic(50, num_classes=4, size=6, channels=1, seed=3)
    assert x.shape == (50, 6, 6, 1) and x.dtype == np.uint8 and y.min() >= 0 and y.max() < 4
    x2, y2 = make_synthetic(50, num_classes=4, size=6, channels=1, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = make_synthetic(7, num_classes=3, size=10, channels=3, seed=0)
    assert x3.shape == (7, 10, 10, 3)


@pytest.mark.parametrize(
    "module, name",
    [("os", "system"), ("builtins", "eval"), ("numpy", "load"), ("subprocess", "Popen"), ("numpy.testing", "assert_equal")],
)
def test_restricted_unpickler_refuses_everything_but_arrays(module, name):
    payload = b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nq\x00."
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load {module}.{name}"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()


@pytest.mark.parametrize("dump", [fakes.py2_pickle, lambda o: pickle.dumps(o, protocol=2), lambda o: pickle.dumps(o, protocol=4)])
def test_restricted_unpickler_loads_cifar_like_dicts(dump):
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    obj = RestrictedUnpickler(io.BytesIO(dump({b"data": data, b"labels": [3, 4], b"name": b"x"})), encoding="bytes").load()
    assert np.array_equal(obj[b"data"], data) and obj[b"labels"] == [3, 4]


def test_restricted_unpickler_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (root / name).write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(MplError, match=r"data_batch_1 is not a CIFAR python batch \(refusing to load posix.system"):
        load_source("cifar10", root, SourceOptions())
    assert not marker.exists()


def _check_cifar(fake, name: str, split: str, layout: str):
    source = load_source(name, fake.path, SourceOptions(split=split, seed=0))
    assert source.classes == fake.classes and source.details == {"split": split, "layout": layout}
    assert source.input_spec.shape == (32, 32, 3)
    got = _decoded(source)
    images, labels = fake.images[split], fake.labels[split]
    assert source.count == len(got) == len(labels)
    assert all(key.startswith(f"{name}-{split}-") for key in got)
    for key, (image, label) in got.items():
        i = _index(key)
        assert label == labels[i] and np.array_equal(image, images[i])  # CHW planes became HWC pixels


@pytest.mark.parametrize("archive", [True, False], ids=["tar.gz", "folder"])
@pytest.mark.parametrize(
    "builder, name, layout",
    [
        (fakes.cifar10_binary, "cifar10", "binary"),
        (fakes.cifar100_binary, "cifar100", "binary"),
        (fakes.cifar10_python, "cifar10", "python"),
        (fakes.cifar100_python, "cifar100", "python"),
    ],
)
def test_cifar_layouts_both_splits(tmp_path, builder, name, layout, archive):
    fake = builder(tmp_path, archive=archive)
    _check_cifar(fake, name, "train", layout)
    _check_cifar(fake, name, "test", layout)


def test_cifar_binary_of_the_wrong_size_names_the_file(tmp_path):
    fake = fakes.cifar10_binary(tmp_path, archive=False)
    with open(fake.path / "data_batch_3.bin", "ab") as fh:
        fh.write(b"\0" * 100)
    with pytest.raises(MplError, match=r"data_batch_3.bin has 12392 bytes, not a multiple of the 3073-byte cifar10 record"):
        load_source("cifar10", fake.path, SourceOptions())


def test_cifar_python_batch_of_the_wrong_shape_names_the_file(tmp_path):
    fake = fakes.cifar100_python(tmp_path, archive=False)
    (fake.path / "train").write_bytes(
        pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"fine_labels": [0, 1, 2]}, protocol=2)
    )
    with pytest.raises(MplError, match=r"cifar-100-python:train has the wrong shape"):
        load_source("cifar100", fake.path, SourceOptions())


def test_cifar_folder_without_the_batches(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MplError, match="does not look like cifar10: expected data_batch_1.bin"):
        load_source("cifar10", tmp_path / "empty", SourceOptions())
    (tmp_path / "x.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(MplError, match=r"x.tar.gz is not a readable CIFAR archive"):
        load_source("cifar10", tmp_path / "x.tar.gz", SourceOptions())


def test_svhn_maps_label_10_to_digit_0(tmp_path):
    fake = fakes.svhn_mat(tmp_path / "train_32x32.mat")
    source = load_source("svhn", fake.path, SourceOptions())
    got = _decoded(source)
    assert len(got) == 20 and all(k.startswith("svhn-train-") for k in got)
    for key, (image, label) in got.items():
        assert label == fake.labels["train"][_index(key)] and np.array_equal(image, fake.images["train"][_index(key)])
    assert sorted(label for _, label in got.values()) == sorted(np.arange(20) % 10)  # 0 present, 10 absent


def test_svhn_of_the_wrong_shape_names_the_file(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "bad.mat", {"X": np.zeros((28, 28, 3, 4), np.uint8), "y": np.ones((4, 1), np.uint8)})
    with pytest.raises(MplError, match=r"bad.mat has the wrong shape: expected X of 32x32x3xN .* got X \(28, 28, 3, 4\)"):
        load_source("svhn", tmp_path / "bad.mat", SourceOptions())
    (tmp_path / "junk.mat").write_bytes(b"junk")
    with pytest.raises(MplError, match=r"junk.mat is not a readable SVHN .mat file"):
        load_source("svhn", tmp_path / "junk.mat", SourceOptions())


def test_image_folder_keeps_encoded_bytes_and_folder_names(tmp_path):
    fake = fakes.image_folder(tmp_path / "tree")
    source = load_source("imagefolder", fake.path, SourceOptions())
    assert source.classes == ["cat", "dog", "zebra"] and source.input_spec.encoding == "mixed"
    samples = list(source.samples())
    by_bytes = {data: rel for rel, data in fake.files.items()}
    assert len(samples) == len(fake.files) == 6
    for s in samples:
        rel = by_bytes[s.data]  # the file's own bytes, not re-encoded
        assert s.ext == ("png" if rel.endswith(".png") else "jpg")
        assert source.classes[s.label] == rel.split("/")[0]
        assert decode_input(s).shape == (12, 10, 3)


def test_image_folder_errors(tmp_path):
    fake = fakes.image_folder(tmp_path / "tree")
    (fake.path / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(MplError, match=r"dog/broken.jpg is not a readable image"):
        load_source("imagefolder", fake.path, SourceOptions())
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(MplError, match="needs one folder per class"):
        load_source("imagefolder", tmp_path / "one", SourceOptions())


def test_paths_for_built_in_and_dataset_sources():
    with pytest.raises(UsageError, match="built in and takes no PATH"):
        load_source("digits", "somewhere", SourceOptions())
    with pytest.raises(UsageError, match="needs a PATH"):
        load_source("svhn", None, SourceOptions())
    with pytest.raises(MplError, match="does not exist"):
        load_source("svhn", "/nonexistent/train_32x32.mat", SourceOptions())

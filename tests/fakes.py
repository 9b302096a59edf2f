"""Builders of tiny fake datasets in the real on-disk layouts, made at test time.

Each builder returns a `Fake`: the path to hand to `mpl data import`, and the images (N x H x W x C
uint8, in file order) and labels it wrote, to compare with what the importer stored.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = [f"fine{i:02d}" for i in range(100)]


@dataclass
class Fake:
    path: Path
    images: dict[str, np.ndarray]  # split -> N x 32 x 32 x 3
    labels: dict[str, np.ndarray]  # split -> N
    classes: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # imagefolder: relative path -> encoded bytes


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _planes(images: np.ndarray) -> np.ndarray:
    """HWC images -> CIFAR rows: 1024 red, then 1024 green, then 1024 blue bytes, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _write(members: dict[str, bytes], root: Path, folder: str, archive: bool) -> Path:
    """Write members as `<root>/<folder>/<name>` files, or as `<root>/<folder>.tar.gz` holding `<folder>/<name>`."""
    root.mkdir(parents=True, exist_ok=True)
    if not archive:
        for name, data in members.items():
            (root / folder).mkdir(exist_ok=True)
            (root / folder / name).write_bytes(data)
        return root / folder
    path = root / f"{folder}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _split_data(rng, per_batch: int, batches: int, num_classes: int, test: int):
    train_x, test_x = _images(rng, per_batch * batches), _images(rng, test)
    train_y, test_y = rng.integers(0, num_classes, len(train_x)), rng.integers(0, num_classes, test)
    return train_x, train_y, test_x, test_y


def cifar10_binary(root: Path, *, archive: bool = True, per_batch: int = 4, test: int = 6, seed: int = 0) -> Fake:
    """cifar-10-batches-bin/: data_batch_{1..5}.bin and test_batch.bin of 3073-byte records <label><r><g><b>."""
    rng = np.random.default_rng(seed)
    train_x, train_y, test_x, test_y = _split_data(rng, per_batch, 5, 10, test)

    def records(x, y):
        return np.concatenate([y.astype(np.uint8)[:, None], _planes(x)], 1).tobytes()

    members = {
        f"data_batch_{b + 1}.bin": records(
            train_x[b * per_batch : (b + 1) * per_batch], train_y[b * per_batch : (b + 1) * per_batch]
        )
        for b in range(5)
    }
    members["test_batch.bin"] = records(test_x, test_y)
    members["batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    members["readme.html"] = b"<html></html>"
    path = _write(members, root, "cifar-10-batches-bin", archive)
    return Fake(path, {"train": train_x, "test": test_x}, {"train": train_y, "test": test_y}, CIFAR10_NAMES)


def cifar100_binary(root: Path, *, archive: bool = True, train: int = 12, test: int = 6, seed: int = 1) -> Fake:
    """cifar-100-binary/: train.bin and test.bin of 3074-byte records <coarse><fine><r><g><b>."""
    rng = np.random.default_rng(seed)
    train_x, train_y, test_x, test_y = _split_data(rng, train, 1, 100, test)

    def records(x, y):
        coarse = (y // 5).astype(np.uint8)[:, None]
        return np.concatenate([coarse, y.astype(np.uint8)[:, None], _planes(x)], 1).tobytes()

    members = {
        "train.bin": records(train_x, train_y),
        "test.bin": records(test_x, test_y),
        "fine_label_names.txt": ("\n".join(CIFAR100_NAMES) + "\n").encode(),
        "coarse_label_names.txt": ("\n".join(f"coarse{i:02d}" for i in range(20)) + "\n").encode(),
    }
    path = _write(members, root, "cifar-100-binary", archive)
    return Fake(path, {"train": train_x, "test": test_x}, {"train": train_y, "test": test_y}, CIFAR100_NAMES)


def py2_pickle(obj: object) -> bytes:
    """Like the real CIFAR python files: protocol 2 with bytes keys, arrays referencing `numpy.core.multiarray`."""
    return pickle.dumps(obj, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar10_python(root: Path, *, archive: bool = True, per_batch: int = 4, test: int = 6, seed: int = 2) -> Fake:
    """cifar-10-batches-py/: data_batch_{1..5}, test_batch (pickled dicts) and batches.meta."""
    rng = np.random.default_rng(seed)
    train_x, train_y, test_x, test_y = _split_data(rng, per_batch, 5, 10, test)

    def batch(x, y, label):
        return py2_pickle(
            {
                b"batch_label": label,
                b"labels": [int(v) for v in y],
                b"data": _planes(x),
                b"filenames": [f"img_{i}.png".encode() for i in range(len(y))],
            }
        )

    members = {
        f"data_batch_{b + 1}": batch(
            train_x[b * per_batch : (b + 1) * per_batch],
            train_y[b * per_batch : (b + 1) * per_batch],
            f"training batch {b + 1} of 5".encode(),
        )
        for b in range(5)
    }
    members["test_batch"] = batch(test_x, test_y, b"testing batch 1 of 1")
    members["batches.meta"] = py2_pickle(
        {b"num_cases_per_batch": per_batch, b"num_vis": 3072, b"label_names": [n.encode() for n in CIFAR10_NAMES]}
    )
    path = _write(members, root, "cifar-10-batches-py", archive)
    return Fake(path, {"train": train_x, "test": test_x}, {"train": train_y, "test": test_y}, CIFAR10_NAMES)


def cifar100_python(root: Path, *, archive: bool = True, train: int = 12, test: int = 6, seed: int = 3) -> Fake:
    """cifar-100-python/: train, test (pickled dicts with fine_labels/coarse_labels) and meta."""
    rng = np.random.default_rng(seed)
    train_x, train_y, test_x, test_y = _split_data(rng, train, 1, 100, test)

    def batch(x, y, name):
        return pickle.dumps(
            {
                b"filenames": [b"f.png"] * len(y),
                b"batch_label": name,
                b"fine_labels": [int(v) for v in y],
                b"coarse_labels": [int(v) // 5 for v in y],
                b"data": _planes(x),
            },
            protocol=2,
        )

    members = {
        "train": batch(train_x, train_y, b"training batch 1 of 1"),
        "test": batch(test_x, test_y, b"testing batch 1 of 1"),
        "meta": pickle.dumps(
            {
                b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
                b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)],
            },
            protocol=2,
        ),
    }
    path = _write(members, root, "cifar-100-python", archive)
    return Fake(path, {"train": train_x, "test": test_x}, {"train": train_y, "test": test_y}, CIFAR100_NAMES)


def svhn_mat(path: Path, *, n: int = 20, seed: int = 4) -> Fake:
    """An SVHN cropped-digits .mat: X is 32 x 32 x 3 x N uint8, y is N x 1 with 10 meaning the digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    images = _images(rng, n)
    digits = np.arange(n) % 10  # every digit, 0 included
    rng.shuffle(digits)
    y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": y})
    return Fake(path, {"train": images}, {"train": digits}, [str(c) for c in range(10)])


def image_folder(root: Path, *, seed: int = 5) -> Fake:
    """root/<class>/<name>.png|.jpg with classes 'cat' and 'dog' (both encodings in each) and 'zebra' (png)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for cls, names in (("cat", ["a.png", "b.jpg", "c.png"]), ("dog", ["d.jpg", "e.png"]), ("zebra", ["f.png"])):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name in names:
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)).save(
                buffer, format="PNG" if name.endswith("png") else "JPEG", quality=90
            )
            (root / cls / name).write_bytes(buffer.getvalue())
            files[f"{cls}/{name}"] = buffer.getvalue()
    return Fake(root, {}, {}, ["cat", "dog", "zebra"], files)

"""Importers: turn a built-in source or a user dataset into samples for a shard set.

Each importer returns a `Source`: class names, the input spec and the samples in a seeded random
order (so labelled shards are class-mixed for streaming), each keyed by its position in the
original dataset (`cifar10-train-0004711`) so a sample can be traced back.
"""

from __future__ import annotations

import io
import math
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mpltools.data.codecs import InputSpec, Sample, encode_npy, encode_png
from mpltools.data.shards import ShardError
from mpltools.data.input_check import channels_of_mode
from mpltools.errors import MplError, UsageError

BUILTIN_SOURCES = ("twomoon", "digits", "synthetic")
DATASET_SOURCES = ("imagefolder", "cifar10", "cifar100", "svhn", "mnist", "fashion-mnist")
SOURCES = BUILTIN_SOURCES + DATASET_SOURCES


@dataclass
class Source:
    name: str
    classes: list[str]
    input_spec: InputSpec
    count: int
    samples: Callable[[], Iterator[Sample]]  # a fresh iterator in the final (shuffled) order
    details: dict


@dataclass
class SourceOptions:
    seed: int = 0
    split: str = "train"  # cifar/svhn: which part of the archive
    num_samples: int | None = None  # twomoon / synthetic
    num_classes: int = 10  # synthetic
    image_size: int = 32  # synthetic
    channels: int = 3  # synthetic
    noise: float = 0.1  # twomoon: std of the Gaussian noise
    scale: float = 1.0  # twomoon: multiplies the coordinates

    def check(self) -> None:
        """Values the generators cannot use (a set of NaN or infinite points would pass every later check)."""
        if not math.isfinite(self.noise) or self.noise < 0:
            raise UsageError(f"--noise must be a finite number >= 0, not {self.noise}.")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise UsageError(f"--scale must be a finite number other than 0, not {self.scale}.")


def load_source(name: str, path: Path | None, opts: SourceOptions) -> Source:
    opts.check()
    if name in BUILTIN_SOURCES and path is not None:
        raise UsageError(f"source {name!r} is built in and takes no PATH (got {path}).")
    if name in DATASET_SOURCES and path is None:
        raise UsageError(f"source {name!r} needs a PATH to the dataset.")
    if name in DATASET_SOURCES and not Path(path).exists():
        raise MplError(f"{path} does not exist; pass the {name} dataset's file or folder.")
    loaders = {"twomoon": _twomoon, "digits": _digits, "synthetic": _synthetic, "imagefolder": _imagefolder,
               "cifar10": _cifar, "cifar100": _cifar, "svhn": _svhn,
               "mnist": _idx, "fashion-mnist": _idx}
    if name not in loaders:
        import difflib

        near = difflib.get_close_matches(name, SOURCES, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UsageError(f"unknown source {name!r}; choose one of {', '.join(SOURCES)}.{hint}")
    return loaders[name](name, None if path is None else Path(path), opts)


def _in_memory(name: str, prefix: str, classes: list[str], spec: InputSpec, inputs: np.ndarray,
               labels: np.ndarray, encode, seed: int, details: dict) -> Source:
    order = np.random.default_rng(seed).permutation(len(labels))
    width = max(7, len(str(len(labels))))

    def samples() -> Iterator[Sample]:
        for i in order:
            ext, data = encode(inputs[i])
            yield Sample(key=f"{prefix}-{i:0{width}d}", ext=ext, data=data, label=int(labels[i]))

    return Source(name, classes, spec, len(labels), samples, details)


def _png(x: np.ndarray) -> tuple[str, bytes]:
    return "png", encode_png(x)


def _npy(x: np.ndarray) -> tuple[str, bytes]:
    return "npy", encode_npy(x.astype(np.float32))


def make_two_moons(n: int, noise: float, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles of n//2 points each (the paper's §3.1 data), plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    n_outer, n_inner = n // 2, n - n // 2
    t_outer, t_inner = np.linspace(0, np.pi, n_outer), np.linspace(0, np.pi, n_inner)
    outer = np.stack([np.cos(t_outer), np.sin(t_outer)], 1)
    inner = np.stack([1 - np.cos(t_inner), 0.5 - np.sin(t_inner)], 1)
    x = np.concatenate([outer, inner]) + rng.normal(0.0, noise, size=(n, 2))
    y = np.concatenate([np.zeros(n_outer, np.int64), np.ones(n_inner, np.int64)])
    return (x * scale).astype(np.float32), y


def _twomoon(name, _path, o: SourceOptions) -> Source:
    n = o.num_samples or 2000
    x, y = make_two_moons(n, o.noise, o.seed, o.scale)
    return _in_memory(name, "twomoon", ["upper", "lower"], InputSpec("vector", "npy", (2,), "float32"), x, y, _npy,
                      o.seed, {"num_samples": n, "noise": o.noise, "scale": o.scale})


def _digits(name, _path, o: SourceOptions) -> Source:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise MplError("the digits source needs scikit-learn: pip install 'meta-pseudo-labels[digits]'.") from None
    bunch = load_digits()
    # The bundled data are 8x8 counts 0..16; store them as ordinary 8-bit grayscale images.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, :, :, None]
    return _in_memory(name, "digits", [str(c) for c in range(10)], InputSpec("image", "png", (8, 8, 1)), images,
                      bunch.target.astype(np.int64), _png, o.seed, {"origin": "sklearn.datasets.load_digits"})


def make_synthetic(n: int, num_classes: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is learnable but not trivial: a per-class smooth pattern, shifted, plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(num_classes, 4, 4, channels))
    reps = -(-size // 4)
    prototypes = np.kron(coarse, np.ones((1, reps, reps, 1)))[:, :size, :size, :]
    labels = rng.integers(0, num_classes, size=n)
    shifts = rng.integers(-size // 8, size // 8 + 1, size=(n, 2))
    images = np.empty((n, size, size, channels), np.uint8)
    for i in range(n):
        img = np.roll(prototypes[labels[i]], tuple(shifts[i]), axis=(0, 1))
        img = 0.6 * img + rng.normal(0, 40.0, size=img.shape) + rng.uniform(0, 100)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def _synthetic(name, _path, o: SourceOptions) -> Source:
    if o.num_classes < 2 or o.image_size < 4 or o.channels not in (1, 3):
        raise UsageError("synthetic needs --num-classes >= 2, --image-size >= 4 and --channels 1 or 3.")
    n = o.num_samples or 1000
    x, y = make_synthetic(n, o.num_classes, o.image_size, o.channels, o.seed)
    return _in_memory(name, "synthetic", [f"class{c}" for c in range(o.num_classes)],
                      InputSpec("image", "png", (o.image_size, o.image_size, o.channels)), x, y, _png, o.seed,
                      {"num_samples": n, "num_classes": o.num_classes, "image_size": o.image_size})


_IMAGE_EXTS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg"}


def _imagefolder(name, root: Path, o: SourceOptions) -> Source:
    from PIL import Image

    if not root.is_dir():
        raise MplError(f"{root} is not a folder; an ImageFolder tree is root/<class_name>/<image>.png|jpg.")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(class_dirs) < 2:
        raise MplError(f"{root} has {len(class_dirs)} class folder(s); an ImageFolder tree needs one folder per class (at least 2).")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        files += [(f, label) for f in sorted(d.rglob("*")) if f.suffix.lower() in _IMAGE_EXTS and not f.name.startswith(".")]
    if not files:
        raise MplError(f"{root} contains no .png/.jpg/.jpeg images in its class folders.")
    shapes = set()
    for f, _ in files:  # a full decode of each file now, so a corrupt image is named before anything is written
        try:
            with Image.open(f) as img:
                img.load()
                shapes.add((img.height, img.width, channels_of_mode(img.mode)))  # as decode_input decodes it
        except Exception as exc:  # noqa: BLE001
            raise MplError(f"{f} is not a readable image ({exc}); remove or replace it.") from None
    encodings = {_IMAGE_EXTS[f.suffix.lower()] for f, _ in files}
    channels = {shape[2] for shape in shapes}
    spec = InputSpec(
        "image",
        encodings.pop() if len(encodings) == 1 else "mixed",
        next(iter(shapes)) if len(shapes) == 1 else None,
        channels=next(iter(channels)) if len(channels) == 1 else None,  # checked for every sample when sizes vary
    )
    order = np.random.default_rng(o.seed).permutation(len(files))

    def samples() -> Iterator[Sample]:
        for i in order:
            f, label = files[i]
            yield Sample(key=f"img-{i:07d}", ext=_IMAGE_EXTS[f.suffix.lower()], data=f.read_bytes(), label=label)

    return Source(name, [d.name for d in class_dirs], spec, len(files), samples, {"root_name": root.name})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python archives only: plain containers and numpy arrays, nothing else."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def _restricted_load(data: bytes, where: str) -> dict:
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001
        raise MplError(f"{where} is not a CIFAR python batch ({exc}).") from None
    if not isinstance(obj, dict):
        raise MplError(f"{where} is not a CIFAR python batch (not a dict).")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _archive_files(path: Path) -> dict[str, bytes]:
    """Basename -> bytes of every regular file in a .tar(.gz) archive or below a folder."""
    if path.is_dir():
        return {f.name: f.read_bytes() for f in path.rglob("*") if f.is_file()}
    try:
        with tarfile.open(path) as tar:
            return {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise MplError(f"{path} is not a readable CIFAR archive ({exc}); pass the .tar.gz as downloaded or its extracted folder.") from None


def _cifar(name, path: Path, o: SourceOptions) -> Source:
    files = _archive_files(path)
    fine = name == "cifar100"
    if o.split not in ("train", "test"):
        raise UsageError(f"--split must be 'train' or 'test' for {name}, not {o.split!r}.")
    bin_names = (["train.bin"] if o.split == "train" else ["test.bin"]) if fine else \
        ([f"data_batch_{i}.bin" for i in range(1, 6)] if o.split == "train" else ["test_batch.bin"])
    py_names = ([o.split]) if fine else ([f"data_batch_{i}" for i in range(1, 6)] if o.split == "train" else ["test_batch"])
    if all(n in files for n in bin_names):
        record = 3074 if fine else 3073
        chunks = []
        for n in bin_names:
            raw = np.frombuffer(files[n], np.uint8)
            if raw.size == 0 or raw.size % record:
                raise MplError(f"{path}: {n} has {raw.size} bytes, not a multiple of the {record}-byte {name} record; the file is truncated or not {name} binary.")
            chunks.append(raw.reshape(-1, record))
        rows = np.concatenate(chunks)
        labels, pixels = rows[:, record - 3073].astype(np.int64), rows[:, record - 3072:]
        names_file = "fine_label_names.txt" if fine else "batches.meta.txt"
        classes = files[names_file].decode().split() if names_file in files else None
        layout = "binary"
    elif all(n in files for n in py_names):
        data, labels = [], []
        for n in py_names:
            batch = _restricted_load(files[n], f"{path}:{n}")
            arr, lab = batch.get("data"), batch.get("fine_labels" if fine else "labels")
            if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 3072 or lab is None or len(lab) != arr.shape[0]:
                raise MplError(f"{path}:{n} has the wrong shape: expected 'data' of N x 3072 uint8 and N labels.")
            data.append(arr.astype(np.uint8))
            labels.append(np.asarray(lab, np.int64))
        pixels, labels = np.concatenate(data), np.concatenate(labels)
        meta = _restricted_load(files["meta" if fine else "batches.meta"], f"{path}:meta") if ("meta" if fine else "batches.meta") in files else {}
        names = meta.get("fine_label_names" if fine else "label_names")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names] if names else None
        layout = "python"
    else:
        raise MplError(f"{path} does not look like {name}: expected {', '.join(bin_names)} (binary version) or {', '.join(py_names)} (python version).")
    num_classes = 100 if fine else 10
    classes = classes or [str(c) for c in range(num_classes)]
    if len(classes) != num_classes or labels.min() < 0 or labels.max() >= num_classes:
        raise MplError(f"{path}: labels or class names do not fit {name}'s {num_classes} classes.")
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes -> HWC
    return _in_memory(name, f"{name}-{o.split}", classes, InputSpec("image", "png", (32, 32, 3)), images, labels,
                      _png, o.seed, {"split": o.split, "layout": layout})


def _svhn(name, path: Path, o: SourceOptions) -> Source:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise MplError("the svhn source needs scipy: pip install 'meta-pseudo-labels[svhn]'.") from None
    try:
        mat = loadmat(path)
    except Exception as exc:  # noqa: BLE001
        raise MplError(f"{path} is not a readable SVHN .mat file ({exc}); pass train_32x32.mat / test_32x32.mat / extra_32x32.mat.") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        got = None if x is None else x.shape
        raise MplError(f"{path} has the wrong shape: expected X of 32x32x3xN and N labels, got X {got}.")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
    if labels.min() < 0 or labels.max() > 9:
        raise MplError(f"{path}: labels outside 0..10 found; this is not an SVHN file.")
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2)).astype(np.uint8)
    return _in_memory(name, f"svhn-{path.stem.split('_')[0]}", [str(c) for c in range(10)],
                      InputSpec("image", "png", (32, 32, 3)), images, labels, _png, o.seed, {"file": path.name})


def _idx(name, root: Path, o: SourceOptions) -> Source:
    from mpltools.data.idx import CLASSES, load_idx_part

    images, labels, details = load_idx_part(name, root, o.split)
    return _in_memory(name, f"{name}-{o.split}", CLASSES[name], InputSpec("image", "png", images.shape[1:]), images,
                      labels, _png, o.seed, details)


__all__ = ["Source", "SourceOptions", "load_source", "SOURCES", "make_two_moons", "make_synthetic", "ShardError"]

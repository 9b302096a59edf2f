"""The IDX format of MNIST, Fashion-MNIST (and KMNIST, EMNIST): reader and importer.

An IDX file is a big-endian header — two zero bytes, a type byte (0x08 = unsigned byte), the number
of dimensions — then one 32-bit size per dimension, then the values. Images are `idx3` (N x 28 x 28),
labels `idx1` (N). Files may be gzip-compressed (`.gz`) or raw; either is detected from its bytes.
Everything is read and validated before the importer yields a sample, so a bad file writes nothing.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from mpltools.errors import MplError, UsageError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CLASSES = {"mnist": [str(c) for c in range(10)], "fashion-mnist": FASHION_CLASSES}
PARTS = {"train": "train", "test": "t10k"}
_UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array stored in one IDX file with `ndim` dimensions; MplError naming the file if it is not one."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise MplError(f"{path} is a damaged or truncated gzip file ({exc}); download it again.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        magic = raw[:4].hex() or "nothing"
        raise MplError(f"{path} is not an IDX file of unsigned bytes with {ndim} dimension(s): its magic number is "
                       f"0x{magic}, expected 0x000008{ndim:02x}. Pass the standard *-idx{ndim}-ubyte[.gz] file.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MplError(f"{path} is truncated: it ends inside the IDX header ({len(raw)} bytes); download it again.")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) < expected:
        raise MplError(f"{path} is truncated: its header promises {' x '.join(map(str, dims))} values "
                       f"({expected:,} bytes) but the file holds {len(raw):,}; download it again.")
    if len(raw) > expected:
        raise MplError(f"{path} has {len(raw) - expected:,} bytes after the {' x '.join(map(str, dims))} values its "
                       f"header declares; it is not a valid IDX file.")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def find_part(root: Path, part: str) -> tuple[Path, Path]:
    """The images and labels files of one part (train or test) in a folder, gzip or not."""
    if part not in PARTS:
        raise UsageError(f"--part must be 'train' or 'test', not {part!r}.")
    if not root.is_dir():
        raise MplError(f"{root} is not a folder; pass the folder holding {PARTS[part]}-images-idx3-ubyte[.gz] "
                       f"and {PARTS[part]}-labels-idx1-ubyte[.gz].")
    found = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        stems = [f"{PARTS[part]}-{kind}-idx{ndim}-ubyte", f"{PARTS[part]}-{kind}.idx{ndim}-ubyte"]
        candidates = [root / (s + ext) for s in stems for ext in ("", ".gz")]
        hits = [c for c in candidates if c.is_file()]
        if not hits:
            raise MplError(f"{root} holds no {stems[0]}[.gz]; pass the folder with the standard IDX files "
                           f"(e.g. /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist).")
        found.append(hits[0])
    return found[0], found[1]


def load_idx_part(name: str, root: Path, part: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Images (N, H, W, 1) uint8 and labels (N,) int64 of one part, validated against each other."""
    images_path, labels_path = find_part(root, part)
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise MplError(f"{images_path} holds {images.shape[0]:,} images but {labels_path} holds {labels.shape[0]:,} "
                       f"labels; the two files are from different parts or versions.")
    if labels.size and labels.max() >= len(CLASSES[name]):
        raise MplError(f"{labels_path} has label {int(labels.max())}; {name} has {len(CLASSES[name])} classes (0..9).")
    details = {"part": part, "images_file": images_path.name, "labels_file": labels_path.name}
    return images[:, :, :, None], labels.astype(np.int64), details

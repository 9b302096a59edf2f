"""A sample and its input spec, and the encoding and decoding of its members (images, .npy arrays),
with errors that name the key.

Decoding is always explicit and full (a Pillow `verify()` lets truncated JPEGs through), and
`.npy` members are loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpltools.data.input_check import channels_of_mode, check_channels, check_shape
from mpltools.data.tarindex import ShardError


@dataclass(frozen=True)
class InputSpec:
    kind: str  # "image" or "vector"
    encoding: str  # "png", "jpg", "npy" or "mixed"
    shape: tuple[int, ...] | None  # (H, W, C) for images, (D,) for vectors; None if it varies
    dtype: str = "uint8"
    channels: int | None = None  # images of varying size: the channels they all decode to, when they agree

    def to_json(self) -> dict:
        d = {"kind": self.kind, "encoding": self.encoding, "shape": list(self.shape) if self.shape else None, "dtype": self.dtype}
        if self.shape is None and self.channels is not None:
            d["channels"] = self.channels
        return d

    @staticmethod
    def from_json(d: dict) -> "InputSpec":
        shape = d.get("shape")
        channels = d.get("channels") if isinstance(d.get("channels"), int) else None
        return InputSpec(d["kind"], d["encoding"], tuple(shape) if shape else None, d.get("dtype", "uint8"), channels)


@dataclass
class Sample:
    key: str
    ext: str  # extension of the input member
    data: bytes  # encoded input
    label: int | None = None
    extras: dict[str, bytes] = field(default_factory=dict)


def decode_input(sample: Sample, where: Path | str = "", spec: InputSpec | None = None) -> np.ndarray:
    """Fully decode an input: images to uint8 HxWxC, vectors to float32 (D,). Errors name the shard `where`
    and the key. Readers of a shard set pass its `spec`: a shape other than the manifest's is an error."""
    try:
        if sample.ext == "npy":
            array = np.load(io.BytesIO(sample.data), allow_pickle=False).astype(np.float32, copy=False)
        else:
            from PIL import Image

            with Image.open(io.BytesIO(sample.data)) as img:
                img.load()  # a full decode: verify() lets truncated JPEGs through
                # Grayscale stays one channel (digits, MNIST-like data); everything else becomes RGB.
                array = np.asarray(img.convert("L") if channels_of_mode(img.mode) == 1 else img.convert("RGB"))
            array = array[:, :, None] if array.ndim == 2 else array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt sample
        raise ShardError(f"{where}: sample {sample.key!r} cannot be decoded as {sample.ext} ({exc}); the file is "
                         "corrupt: re-create the shard set from its source (`mpl data import`).") from None
    if spec is not None:
        check_shape(array, spec.shape, where, sample.key)
        check_channels(array, spec.channels if spec.shape is None else None, where, sample.key)
    return array


def decode_extra(sample: Sample, name: str, where: Path | str = "") -> np.ndarray:
    try:
        return np.load(io.BytesIO(sample.extras[name]), allow_pickle=False)
    except KeyError:
        raise ShardError(f"{where}: sample {sample.key!r} has no {name!r} member.") from None
    except Exception as exc:  # noqa: BLE001
        raise ShardError(f"{where}: sample {sample.key!r} member {name!r} is not a valid .npy array ({exc}).") from None


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    from PIL import Image

    img = Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()

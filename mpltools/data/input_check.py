"""The one check of a decoded input against its shard set's input spec.

`codecs.decode_input(sample, where, spec)` calls `check_shape` after every decode, so each reader
(train's streams, eval, finetune, filter-unlabeled, `data info --verify`) refuses an image whose
(H, W, C) (or a vector whose (D,)) differs from `manifest.json`'s `input.shape` with a ShardError
naming the shard and the sample key, instead of resizing it silently or failing later in the model
with a bare RuntimeError. The check is a tuple comparison on an array already decoded: no extra work.

A set of images of varying size (an ImageFolder tree of mixed sizes) has no input shape; what all its
images share, their number of channels, is recorded instead and checked by `check_channels`.

`channels_of_mode` is the one rule for how many channels a Pillow mode decodes to, shared by the
decoder and the ImageFolder import that writes the manifest's shape, so the two cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpltools.data.tarindex import ShardError

GREY_MODES = ("L", "1", "I;16")  # decoded to one channel; every other mode becomes RGB


def channels_of_mode(mode: str) -> int:
    return 1 if mode in GREY_MODES else 3


def describe(shape: tuple[int, ...] | list[int]) -> str:
    """`[16, 16, 3] (16x16 RGB)`: the shape and what it means, for messages."""
    shape = list(shape)
    if len(shape) == 3:
        colour = {1: "grey", 3: "RGB"}.get(shape[2], f"{shape[2]}-channel")
        return f"{shape} ({shape[0]}x{shape[1]} {colour})"
    if len(shape) == 1:
        return f"{shape} (a vector of {shape[0]})"
    return str(shape)


def check_shape(array: np.ndarray, expected: tuple[int, ...] | None, where: Path | str, key: str) -> None:
    """Raise ShardError naming the shard `where` and `key` if `array` does not have the spec's shape."""
    if expected is None or array.shape == expected:
        return
    raise ShardError(
        f"{where}: sample {key!r} decodes to shape {describe(array.shape)}, but the shard set's manifest.json "
        f"declares input shape {describe(expected)}. Every sample of a shard set must match its input spec: "
        "re-create the set from its source with `mpl data import` (and `mpl data split`) instead of adding "
        "or editing shards by hand.")


def check_channels(array: np.ndarray, expected: int | None, where: Path | str, key: str) -> None:
    """For a set of images of varying size (no input shape): raise ShardError if `array` does not have the
    channels the manifest records."""
    if expected is None or array.ndim != 3 or array.shape[2] == expected:
        return
    raise ShardError(
        f"{where}: sample {key!r} decodes to {describe(array.shape)}, but the shard set's manifest.json declares "
        f"{expected}-channel images ({'grey' if expected == 1 else 'RGB' if expected == 3 else 'other'}). Re-create the "
        "set from its source with `mpl data import` instead of adding or editing shards by hand.")

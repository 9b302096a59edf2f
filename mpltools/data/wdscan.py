"""One pass over plain WebDataset shards (no manifest): counts, labels, classes and the input spec.

`mpl data import webdataset` uses it to adopt shards written by `webdataset.TarWriter` or `tar`,
`mpl data manifest` uses it (strict mode) to write the manifest.json that remote shards need, and
`open_shard_set` for a local brace pattern (or `pipe:`) with no manifest.json beside it.
A sample's input is one `png`/`jpg`/`jpeg`/`npy` member. Its label is `cls` (an integer); adopting
also reads `label.txt`/`label` (an integer or a class name) and `json` (an integer, a name, or an
object with "label", "cls" or "class"). Images are sized from their headers; nothing is unpickled.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpltools.data.codecs import InputSpec, Sample
from mpltools.data.shards import read_shard
from mpltools.data.tarindex import ShardError

LABEL_MEMBERS = ("label.txt", "label", "json")
IMPORT_HINT = "run `mpl data import webdataset PATTERN --out DIR` to adopt the shards into a shard set"


def classes_hint(*sets) -> str:
    """What to add to a class-mismatch message when a set's classes were only inferred by a scan."""
    scanned = [s.root for s in sets if s.scanned]
    if not scanned:
        return ""
    return (f" {scanned[0]} has no manifest.json, so its classes are just its label numbers: adopt it with "
            "`mpl data import webdataset PATTERN --classes FILE --out DIR` to give them names.")


@dataclass
class Scan:
    counts: list[int]  # samples per shard
    labeled: bool
    classes: list[str]
    class_counts: list[int] | None
    input_spec: InputSpec
    label_index: dict = field(default_factory=dict)  # raw label value (int or name) -> class index
    extras: list[str] = field(default_factory=list)  # extra members (not labels) that every sample carries


def raw_label(sample: Sample, where: str, adopt: bool) -> int | str | None:
    """The label a sample carries: `cls`, or (when adopting) one of LABEL_MEMBERS; None if it has none."""
    if sample.label is not None:
        return sample.label
    for ext in LABEL_MEMBERS:
        if ext in sample.extras:
            if not adopt:
                raise ShardError(f"{where}: sample {sample.key!r} keeps its label in a {ext!r} member, but mpltools reads "
                                 f"labels from `cls` members; {IMPORT_HINT} (it rewrites the labels).")
            return _parse_label(sample.extras[ext], ext, sample.key, where)
    return None


def _parse_label(payload: bytes, ext: str, key: str, where: str) -> int | str:
    try:
        text = payload.decode("utf-8").strip()
        value = json.loads(text) if ext == "json" else text
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ShardError(f"{where}: sample {key!r} has a {ext!r} label member that is not UTF-8 text/JSON.") from None
    if isinstance(value, dict):
        value = next((value[k] for k in ("label", "cls", "class") if k in value), None)
    if isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise ShardError(f"{where}: sample {key!r} has a {ext!r} member without a usable label "
                         "(expected an integer, a class name, or JSON with \"label\").")
    return value


def input_shape(sample: Sample, where: str) -> tuple[str, tuple[int, ...]]:
    """(kind, shape) of a sample's input, from the image header or the .npy array; errors name the key."""
    try:
        if sample.ext == "npy":
            array = np.load(io.BytesIO(sample.data), allow_pickle=False)
            return ("vector" if array.ndim == 1 else "image"), tuple(int(n) for n in array.shape)
        from PIL import Image

        with Image.open(io.BytesIO(sample.data)) as img:
            width, height = img.size
            channels = 1 if img.mode in ("L", "1", "I;16") else 3  # what decode_input converts to
        return "image", (height, width, channels)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt sample
        raise ShardError(f"{where}: sample {sample.key!r} cannot be read as {sample.ext} ({exc}); the file is corrupt.") from None


class Scanner:
    """One pass over shards, a shard at a time (`add`), then what was found (`finish`). `names` in messages are
    what the user calls the shards (a URL, not its local copy)."""

    def __init__(self, *, adopt: bool, classes: list[str] | None = None):
        self.adopt, self.classes = adopt, classes
        self.counts: list[int] = []
        self.names: list[str] = []
        self.labels: list[int | str] = []
        self.unlabeled_at: tuple[str, str] | None = None
        self.labeled_at: tuple[str, str] | None = None
        self.first: tuple[str, str, tuple] | None = None  # shard, key, (kind, shape) of the first sample
        self.encodings: set[str] = set()
        self.extras: set[str] | None = None  # the extra members every sample has

    def add(self, path: Path, name: str) -> int:
        """Read one shard; returns its number of samples."""
        n = 0
        for sample in read_shard(path):
            n += 1
            self._sample(sample, name)
        self.counts.append(n)
        self.names.append(name)
        return n

    def _sample(self, sample: Sample, name: str) -> None:
        label = raw_label(sample, name, self.adopt)
        if label is None:
            self.unlabeled_at = self.unlabeled_at or (name, sample.key)
        else:
            self.labeled_at = self.labeled_at or (name, sample.key)
            self.labels.append(label)
        if self.labeled_at and self.unlabeled_at:
            raise ShardError(f"{self.unlabeled_at[0]}: sample {self.unlabeled_at[1]!r} has no label but {self.labeled_at[0]}: "
                             f"sample {self.labeled_at[1]!r} has one; a shard set is all labelled or all unlabelled (missing labels?).")
        shape = input_shape(sample, name)
        self.encodings.add("jpg" if sample.ext == "jpeg" else sample.ext)
        members = set(sample.extras) - set(LABEL_MEMBERS)
        self.extras = members if self.extras is None else self.extras & members
        if self.first is None:
            self.first = (name, sample.key, shape)
        elif shape != self.first[2]:
            raise ShardError(f"{name}: sample {sample.key!r} has an input of shape {shape[1]} but {self.first[0]}: "
                             f"sample {self.first[1]!r} has {self.first[2][1]}; a shard set holds one input shape (resize the inputs first).")

    def finish(self) -> Scan:
        names, adopt, encodings = self.names, self.adopt, set(self.encodings)
        if self.first is None:
            raise ShardError(f"{names[0] if len(names) == 1 else f'{names[0]} .. {names[-1]}'} holds no samples; nothing to read.")
        kind, shape = self.first[2]
        if kind == "image" and "npy" in encodings:
            if not adopt or len(shape) not in (2, 3):
                raise ShardError(f"{self.first[0]}: sample {self.first[1]!r} is a {len(shape)}-D .npy array; mpltools reads .npy "
                                 f"inputs as 1-D vectors and images as png/jpg: {IMPORT_HINT} (it converts uint8 arrays to png).")
            shape = shape if len(shape) == 3 else (*shape, 1)
            encodings = {"png"}
        if "npy" in encodings and len(encodings) > 1:
            raise ShardError(f"{self.first[0]}: the shards mix .npy vectors and images; a shard set holds one kind of input.")
        spec = InputSpec(kind, encodings.pop() if len(encodings) == 1 else "mixed", shape,
                         "float32" if kind == "vector" else "uint8")
        index = _class_index(self.labels, self.classes, names)
        class_counts = None
        if self.labels:
            class_counts = [0] * len(index["classes"])
            for label in self.labels:
                class_counts[index["map"][label]] += 1
        return Scan(self.counts, bool(self.labels), index["classes"], class_counts, spec, index["map"],
                    sorted(self.extras or ()))


def scan_shards(paths: list[Path], names: list[str], *, adopt: bool, classes: list[str] | None = None) -> Scan:
    """Read every shard once. `names` are what messages call the shards (a URL, not its local copy)."""
    scanner = Scanner(adopt=adopt, classes=classes)
    for path, name in zip(paths, names):
        scanner.add(path, name)
    return scanner.finish()


def _class_index(labels: list[int | str], classes: list[str] | None, names: list[str]) -> dict:
    values = set(labels)
    where = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
    if classes is not None:
        mapping: dict = {}
        for value in values:
            if isinstance(value, int):
                if not 0 <= value < len(classes):
                    raise ShardError(f"{where}: label {value} is outside 0..{len(classes) - 1} (the {len(classes)} classes given).")
                mapping[value] = value
            elif value in classes:
                mapping[value] = classes.index(value)
            else:
                raise ShardError(f"{where}: label {value!r} is not one of the classes given ({', '.join(classes[:5])}, ...).")
        return {"classes": list(classes), "map": mapping}
    if not values:
        return {"classes": [], "map": {}}
    if all(isinstance(v, int) for v in values):
        if min(values) < 0:
            raise ShardError(f"{where}: label {min(values)} is negative; labels are class indices 0..N-1.")
        top = max(values)
        return {"classes": [str(i) for i in range(top + 1)], "map": {v: v for v in values}}
    if any(isinstance(v, int) for v in values):
        raise ShardError(f"{where}: labels mix integers and class names; pass --classes to say which name is which index.")
    names_sorted = sorted(values)
    return {"classes": names_sorted, "map": {v: i for i, v in enumerate(names_sorted)}}

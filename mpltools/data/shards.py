"""Reading and writing the tar shards of a shard set (the format: data/format.py).

`ShardWriter` writes samples into shards and closes the set with its manifest; `read_shard` yields a
shard's samples, `index_shard` and `read_keys_and_labels` read only where they lie, and `ShardSet` is a
readable set (a folder opened by `open_folder`; patterns and URLs: data/locations.py).

Reading never uses WebDataset's default decoders (they unpickle `.pyd`/`.pkl` members); inputs are
decoded explicitly (data/codecs.py), and `.npy` members are loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mpltools.data import fetching, verify
from mpltools.data.codecs import InputSpec, Sample
from mpltools.data.fastindex import index_plain
from mpltools.data.format import (
    INPUT_EXTENSIONS,
    MANIFEST,
    SHARD_PATTERN,
    ManifestFields,
    build_manifest,
    read_manifest,
    shard_names,
    shard_entry,
    write_manifest,
)
from mpltools.data.tarindex import NotPlain, ShardError, check_end, end_of_archive, member_bytes, scan_members

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def validate_key(key: str) -> None:
    # Dots would split the key from the extension on read; slashes and '..' escape the archive.
    if not _KEY_RE.match(key):
        raise ShardError(
            f"invalid sample key {key!r}: keys may contain only letters, digits, '_' and '-' "
            "(no '/', '..' or dots)."
        )


class ShardWriter:
    """Writes samples into shards inside `folder` (which the caller makes atomic) and a manifest.

    The tar bytes are the ones `tarfile` writes in USTAR format, with fixed metadata (mtime 0, ...),
    so the same samples always give byte-identical shards; checksums are computed while writing.
    """

    def __init__(self, folder: Path, *, input_spec: InputSpec, classes: list[str], labeled: bool,
                 provenance: dict, max_per_shard: int = 10_000, extras: tuple[str, ...] = ()):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.input_spec, self.classes, self.labeled = input_spec, list(classes), labeled
        self.provenance, self.max_per_shard, self.extras = provenance, max_per_shard, tuple(extras)
        self._keys: set[str] = set()
        self._shards: list[dict] = []  # the manifest's entries of the shards written so far
        self._name = ""
        self._fh = None
        self._digest = hashlib.sha256()
        self._offset = 0
        self._count_in_shard = 0
        self.class_counts = [0] * len(self.classes)
        self.num_samples = 0

    def write(self, sample: Sample) -> None:
        self._check(sample.key, sample.label)
        members = [(f"{sample.key}.{sample.ext}", sample.data)]
        if self.labeled:
            members.append((f"{sample.key}.cls", str(int(sample.label)).encode()))
        for ext, payload in sorted(sample.extras.items()):
            members.append((f"{sample.key}.{ext}", payload))
        self._append(b"".join(member_bytes(name, payload) for name, payload in members))

    def write_raw(self, key: str, label: int | None, raw: bytes) -> None:
        """Append a sample's tar members as read from another shard (see `index_shard`): its input and extras,
        and its `cls` member (holding `label`) exactly when this set is labelled. Nothing is decoded."""
        self._check(key, label)
        self._append(raw)

    def _check(self, key: str, label: int | None) -> None:
        validate_key(key)
        if key in self._keys:
            raise ShardError(f"duplicate sample key {key!r}; every key in a shard set must be unique.")
        self._keys.add(key)
        if self.labeled:
            if label is None:
                raise ShardError(f"sample {key!r} has no label but the shard set is labelled.")
            if not 0 <= label < len(self.classes):
                raise ShardError(f"sample {key!r} has label {label}, outside the class range 0..{len(self.classes) - 1}.")
            self.class_counts[label] += 1

    def _append(self, data: bytes) -> None:
        if self._fh is None or self._count_in_shard >= self.max_per_shard:
            self._open_next_shard()
        self._fh.write(data)
        self._digest.update(data)
        self._offset += len(data)
        self._count_in_shard += 1
        self.num_samples += 1

    def _open_next_shard(self) -> None:
        self._close_shard()
        self._name = SHARD_PATTERN % len(self._shards)
        self._fh = open(self.folder / self._name, "wb", buffering=1 << 20)
        self._digest, self._offset, self._count_in_shard = hashlib.sha256(), 0, 0

    def _close_shard(self) -> None:
        if self._fh is not None:
            tail = end_of_archive(self._offset)
            self._fh.write(tail)
            self._digest.update(tail)
            self._fh.close()
            self._fh = None
            self._shards.append(shard_entry(self._name, self._count_in_shard, self._digest.hexdigest(), self._offset + len(tail)))

    def close(self) -> dict:
        """Finish the last shard and write the manifest; return it."""
        self._close_shard()
        manifest = build_manifest(num_samples=self.num_samples, labeled=self.labeled, classes=self.classes,
                                  class_counts=self.class_counts if self.labeled else None, input_spec=self.input_spec.to_json(),
                                  extras=list(self.extras), shards=self._shards, provenance=self.provenance)
        write_manifest(self.folder, manifest)
        return manifest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ShardSet(ManifestFields):
    """A readable shard set: a manifest folder, or a brace pattern / URL of shards (`root` is then that string).
    Its manifest's fields are properties (data/format.py); a manifest-less set knows only its shard files."""

    root: Path
    shard_paths: list[Path]
    manifest: dict | None
    manifest_sha256: str | None = None
    origin: str | None = None  # where the metadata came from: a manifest.json, or a scan (no checksums)

    def require_manifest(self, why: str) -> None:
        if self.manifest is None:
            raise ShardError(f"{self.root}: {why} needs a shard set folder with {MANIFEST}, not a bare shard pattern.")

    def require_labels(self, why: str) -> None:
        self.require_manifest(why)
        if not self.labeled:
            raise ShardError(f"{self.root} is an unlabelled shard set, but {why} needs labels; use a labelled set (e.g. the `labeled/` or `val/` output of `mpl data split`).")

    def samples(self, shard_indices: list[int] | None = None) -> Iterator[Sample]:
        indices = range(len(self.shard_paths)) if shard_indices is None else shard_indices
        for i in indices:
            yield from read_shard(self.shard_paths[i], num_classes=self.num_classes)


def open_folder(root: Path) -> ShardSet:
    """Open a shard set folder, validating its manifest and that every shard it lists is there."""
    root = Path(root)
    if not root.exists():
        raise ShardError(f"{root} does not exist; pass a shard set folder (made by `mpl data import` or `mpl data split`).")
    if not root.is_dir():
        raise ShardError(f"{root} is not a shard set: expected a folder with {MANIFEST} and shard-*.tar files.")
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ShardError(f"{root} is not a shard set: it has no {MANIFEST}. Create shard sets with `mpl data import`; plain "
                         f"WebDataset shards can be read as a brace pattern ('{root}/shard-{{000000..000009}}.tar') or adopted "
                         "with `mpl data import webdataset PATTERN --out DIR`.")
    manifest, manifest_sha256 = read_manifest(root)
    paths = [root / name for name in shard_names(manifest)]
    for path in paths:
        if not path.is_file():
            raise ShardError(f"{path} is listed in {manifest_path} but missing; the shard set is incomplete, re-create it.")
    shards = ShardSet(root=root, shard_paths=paths, manifest=manifest, manifest_sha256=manifest_sha256, origin=str(manifest_path))
    verify.register(paths, shards.shard_checksums)
    return shards


def read_shard(path: Path, num_classes: int | None = None) -> Iterator[Sample]:
    """Yield the samples of one shard in order, raising ShardError that names the shard and key."""
    current: Sample | None = None
    seen: set[str] = set()
    try:
        # A remote shard is read from its local copy, fetched and checked against the manifest first.
        with fetching.fetched(path) as local, verify.open_checked(local) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    raise ShardError(f"{path}: member {member.name!r} is not a regular file; shards hold only files.")
                key, _, ext = member.name.partition(".")
                if "/" in member.name or not ext:
                    raise ShardError(f"{path}: member name {member.name!r} is not of the form <key>.<ext>.")
                payload = tar.extractfile(member).read()
                if current is None or key != current.key:
                    if current is not None:
                        yield _finish(current, path, num_classes)
                    if key in seen:
                        raise ShardError(f"{path}: sample key {key!r} appears twice; keys must be unique.")
                    seen.add(key)
                    current = Sample(key=key, ext="", data=b"")
                _add_member(current, ext, payload, path)
            check_end(fh, tar.offset, path)  # tarfile ends silently at a truncated or corrupt header
            fh.finish()
    except (tarfile.TarError, EOFError, OSError) as exc:
        where = f" after sample {current.key!r}" if current else ""
        raise ShardError(f"{path} is not a readable tar shard{where} ({exc}); it is truncated or corrupt: re-create or re-download it.") from None
    if current is not None:
        yield _finish(current, path, num_classes)


def _add_member(sample: Sample, ext: str, payload: bytes, path: Path) -> None:
    if ext in INPUT_EXTENSIONS:
        if sample.ext:
            raise ShardError(f"{path}: sample {sample.key!r} has two inputs ({sample.ext}, {ext}).")
        sample.ext, sample.data = ext, payload
    elif ext == "cls":
        try:
            sample.label = int(payload.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise ShardError(f"{path}: sample {sample.key!r} has a label that is not an integer: {payload[:20]!r}.") from None
    elif ext in sample.extras:
        raise ShardError(f"{path}: sample {sample.key!r} has {ext!r} twice.")
    else:
        sample.extras[ext] = payload


def _finish(sample: Sample, path: Path, num_classes: int | None) -> Sample:
    if not sample.ext:
        raise ShardError(f"{path}: sample {sample.key!r} has no input member (png/jpg/npy).")
    if sample.label is not None and num_classes is not None and not 0 <= sample.label < num_classes:
        raise ShardError(f"{path}: sample {sample.key!r} has label {sample.label}, outside 0..{num_classes - 1}.")
    return sample


def read_keys_and_labels(path: Path) -> list[tuple[str, int | None]]:
    """(key, label) of every sample of a shard, reading tar headers and labels only (inputs are skipped).

    `mpl data split` uses this for its first pass so that choosing a split costs almost no I/O.
    """
    out: list[tuple[str, int | None]] = []
    try:
        with open(path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if not out or out[-1][0] != key:
                    out.append((key, None))
                if ext == "cls":
                    out[-1] = (key, int(tar.extractfile(member).read().decode("ascii").strip()))
            check_end(fh, tar.offset, path)
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path} is not a readable tar shard ({exc}); it is truncated or corrupt: re-create it.") from None
    return out


@dataclass
class ShardIndex:
    """Where each sample of a shard lies, from its tar headers alone: `mpl data split` copies these bytes."""

    keys: list[str]
    labels: np.ndarray  # int64, -1 where a sample has no cls member
    bounds: np.ndarray  # int64 (n, 4): start, end, cls_start, cls_end (the cls_* are -1 without a label)


def index_shard(path: Path, num_classes: int | None = None) -> ShardIndex | None:
    """Index a shard of plain ustar members, checking it like `read_shard` does; None if it needs `tarfile`.

    A sample's members are consecutive, so they are the bytes `start:end` of the file, and each
    sample starts where the previous one ends. Well-formed shards take the vectorised path
    (data/fastindex.py); anything it does not accept is read here, member by member.
    """
    fast = index_plain(path, num_classes)
    if fast is not None:
        return ShardIndex(*fast)
    keys: list[str] = []
    flat: list[int] = []  # label, start, end, cls_start, cls_end per sample
    seen: set[str] = set()
    has_input, exts = False, set()

    def finish() -> None:
        if keys and not has_input:
            raise ShardError(f"{path}: sample {keys[-1]!r} has no input member (png/jpg/npy).")

    try:
        with open(path, "rb", buffering=1 << 20) as fh:
            for name, start, end, payload in scan_members(fh, path, read_suffix=".cls"):
                key, _, ext = name.partition(".")
                if "/" in name or not ext:
                    raise ShardError(f"{path}: member name {name!r} is not of the form <key>.<ext>.")
                if not keys or key != keys[-1]:
                    finish()
                    if key in seen:
                        raise ShardError(f"{path}: sample key {key!r} appears twice; keys must be unique.")
                    seen.add(key)
                    keys.append(key)
                    flat += [-1, start, end, -1, -1]
                    has_input, exts = False, set()
                flat[-3] = end
                if ext in exts:
                    raise ShardError(f"{path}: sample {key!r} has {ext!r} twice.")
                exts.add(ext)
                if ext in INPUT_EXTENSIONS:
                    if has_input:
                        raise ShardError(f"{path}: sample {key!r} has two inputs.")
                    has_input = True
                elif ext == "cls":
                    try:
                        label = int(payload.decode("ascii").strip())
                    except (UnicodeDecodeError, ValueError):
                        raise ShardError(f"{path}: sample {key!r} has a label that is not an integer: {payload[:20]!r}.") from None
                    if num_classes is not None and not 0 <= label < num_classes:
                        raise ShardError(f"{path}: sample {key!r} has label {label}, outside 0..{num_classes - 1}.")
                    flat[-5], flat[-2], flat[-1] = label, start, end
            finish()
    except NotPlain:
        return None
    except OSError as exc:
        raise ShardError(f"{path} cannot be read ({exc}).") from None
    table = np.asarray(flat, np.int64).reshape(-1, 5)
    return ShardIndex(keys, table[:, 0].copy(), table[:, 1:].copy())

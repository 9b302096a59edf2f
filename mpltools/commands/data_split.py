"""`mpl data split SRC --out DIR`: a seeded, class-balanced split into labeled/, unlabeled/ and val/.

Streaming, in two passes: the first reads only tar headers and labels to choose the split (and
where each sample's bytes lie), the second copies each sample's tar members unchanged to its
destination, checking every source shard's sha256 against the manifest on the way and decoding each
sample's input once (a corrupt image, or one of another shape than the manifest's, stops the split
instead of being carried into the new sets). Images are never all held in memory, so this scales to
ImageNet-size sets. Shards with tar features
beyond plain ustar headers (e.g. written by `webdataset.TarWriter`) take a slower path through
`tarfile` that re-writes the members.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpltools import __version__, log
from mpltools.atomic import atomic_dir, check_can_write
from mpltools.data.codecs import InputSpec, Sample, decode_input
from mpltools.data.fetching import fetched
from mpltools.data.format import INPUT_EXTENSIONS, Manifest
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardError, ShardIndex, ShardWriter, index_shard, read_keys_and_labels, read_shard, sha256_file
from mpltools.data.tarindex import BLOCK
from mpltools.errors import MplError, UsageError

LABELED, VAL, UNLABELED = 1, 2, 4


@dataclass
class SplitSizes:
    labeled_per_class: int | None = None
    labeled_total: int | None = None
    labeled_fraction: float | None = None
    labeled_rest: bool = False  # every sample not in val/ is labelled (ImageNet + held-out validation)
    val_per_class: int | None = None
    val_total: int | None = None
    val_fraction: float | None = None
    include_labeled_in_unlabeled: bool = False


# The paper's benchmarks. Totals are spread evenly over the classes.
PRESETS = {
    "cifar10-4k": SplitSizes(labeled_total=4000, val_total=5000),
    "svhn-1k": SplitSizes(labeled_total=1000, val_total=0),
    "imagenet-10pct": SplitSizes(labeled_fraction=0.1, val_total=0),
    "imagenet-heldout": SplitSizes(labeled_rest=True, val_total=25_000),
}


def sizes_from(
    preset: str | None,
    *,
    labeled_per_class: int | None = None,
    labeled_total: int | None = None,
    labeled_fraction: float | None = None,
    val_per_class: int | None = None,
    val_total: int | None = None,
    val_fraction: float | None = None,
    include_labeled_in_unlabeled: bool = False,
) -> SplitSizes:
    """The sizes of `mpl data split`: a preset's, where one is named, with the labelled (or validation) sizes
    replaced as a whole by any labelled (or validation) size given; some labelled size is required."""
    sizes = SplitSizes()
    if preset is not None:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
        sizes = SplitSizes(**vars(PRESETS[preset]))
    labeled = dict(labeled_per_class=labeled_per_class, labeled_total=labeled_total, labeled_fraction=labeled_fraction)
    val = dict(val_per_class=val_per_class, val_total=val_total, val_fraction=val_fraction)
    given_labeled = any(v is not None for v in labeled.values())
    if given_labeled:
        sizes.labeled_per_class = sizes.labeled_total = sizes.labeled_fraction = None
        sizes.labeled_rest = False
    if any(v is not None for v in val.values()):
        sizes.val_per_class = sizes.val_total = sizes.val_fraction = None
    for key, value in {**labeled, **val}.items():
        if value is not None:
            setattr(sizes, key, value)
    if preset is None and not given_labeled:
        raise UsageError("say how many samples are labelled: --labeled-per-class, --labeled, --labeled-fraction or --preset.")
    sizes.include_labeled_in_unlabeled = include_labeled_in_unlabeled
    return sizes


def _per_class(
    total: int | None, per_class: int | None, fraction: float | None, counts: np.ndarray, rng: np.random.Generator, what: str
) -> np.ndarray:
    given = [v is not None for v in (total, per_class, fraction)]
    if sum(given) > 1:
        raise UsageError(f"give the {what} size once: per class, as a total, or as a fraction.")
    k = len(counts)
    if per_class is not None:
        return np.full(k, per_class)
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise UsageError(f"the {what} fraction must be between 0 and 1, not {fraction}.")
        return np.floor(counts * fraction).astype(int)
    if total is not None:
        # Spread evenly; the remainder goes to classes chosen by the seeded generator.
        sizes = np.full(k, total // k)
        sizes[rng.permutation(k)[: total % k]] += 1
        return sizes
    return np.zeros(k, int)


def choose(labels: np.ndarray, num_classes: int, sizes: SplitSizes, seed: int, classes: list[str]) -> np.ndarray:
    """Destination flags per sample (LABELED | VAL | UNLABELED), deterministic given the seed."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=num_classes)
    n_val = _per_class(sizes.val_total, sizes.val_per_class, sizes.val_fraction, counts, rng, "validation")
    n_lab = (
        counts - n_val
        if sizes.labeled_rest
        else _per_class(sizes.labeled_total, sizes.labeled_per_class, sizes.labeled_fraction, counts, rng, "labelled")
    )
    for c in range(num_classes):
        if n_lab[c] + n_val[c] > counts[c] or n_lab[c] < 0:
            raise MplError(
                f"class {classes[c]!r} has {counts[c]} samples, fewer than the {n_lab[c]} labelled + "
                f"{n_val[c]} validation asked for; ask for fewer per class."
            )
    dest = np.zeros(len(labels), np.uint8)
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        dest[members[: n_lab[c]]] = LABELED
        dest[members[n_lab[c] : n_lab[c] + n_val[c]]] = VAL
        dest[members[n_lab[c] + n_val[c] :]] = UNLABELED
    if sizes.include_labeled_in_unlabeled:
        dest[dest == LABELED] |= UNLABELED
    return dest


from mpltools.data.hidden_labels import HIDDEN_LABELS, write_hidden_labels  # noqa: E402


def run(
    src: str,
    out: Path,
    sizes: SplitSizes,
    *,
    seed: int,
    preset: str | None,
    max_per_shard: int,
    force: bool,
    command: str,
    keep_hidden_labels: bool = False,
) -> dict:
    check_can_write(out, force)  # before reading anything
    shards = open_shard_set(src)
    shards.require_labels("splitting")
    indexes, keys, labels = _read_labels(shards)
    _check_unique(keys, shards)
    dest = choose(labels, shards.num_classes, sizes, seed, shards.classes)
    provenance = {
        "command": command,
        "source_manifest_sha256": shards.manifest_sha256,
        "source": str(src),
        "seed": seed,
        "preset": preset,
        "sizes": {k: v for k, v in vars(sizes).items() if v not in (None, False)},
        "include_labeled_in_unlabeled": sizes.include_labeled_in_unlabeled,
        "mpltools_version": __version__,
    }
    hidden = labels if keep_hidden_labels else None
    manifests = _write_parts(out, shards, indexes, keys, dest, provenance, max_per_shard, force, hidden)
    report = {"out": str(out), "seed": seed}
    for name, m in manifests.items():
        fields = Manifest(m)
        report[name] = {"path": str(out / name), "num_samples": fields.num_samples, "class_counts": fields.class_counts}
    if keep_hidden_labels:
        report["hidden_labels"] = str(out / HIDDEN_LABELS)
    return report


def _read_labels(shards) -> tuple[list[ShardIndex | None], list[str], np.ndarray]:
    """The first pass: each shard's index (None: tar features beyond plain ustar), the keys and the labels
    of the whole set, checked against the manifest's counts and classes."""
    manifest = shards.origin  # named in messages: a manifest.json, or a scan of manifest-less shards
    indexes: list[ShardIndex | None] = []
    keys: list[str] = []
    labels: list[np.ndarray] = []
    with log.progress("split: read labels", total=len(shards.shard_paths), unit="shards") as bar:
        for path, expected in zip(shards.shard_paths, shards.shard_counts):
            with fetched(path) as local:  # a remote shard: a checked local copy, one at a time
                index = index_shard(local, num_classes=shards.num_classes)
                pairs = read_keys_and_labels(local) if index is None else None  # tar features beyond plain ustar
            if index is None:
                shard_keys = [k for k, _ in pairs]
                shard_labels = np.asarray([-1 if v is None else v for _, v in pairs], np.int64)
            else:
                shard_keys, shard_labels = index.keys, index.labels
            if len(shard_keys) != expected:
                raise ShardError(
                    f"{path} holds {len(shard_keys)} samples but {manifest} says {expected}; "
                    "the shard is truncated or the manifest is wrong: re-create the shard set."
                )
            bad = np.flatnonzero((shard_labels < 0) | (shard_labels >= shards.num_classes))
            if bad.size:
                key, label = shard_keys[bad[0]], shard_labels[bad[0]]
                raise ShardError(
                    f"{path}: sample {key!r} has no label in a labelled shard set."
                    if label < 0
                    else f"{path}: sample {key!r} has label {label}, outside 0..{shards.num_classes - 1}."
                )
            indexes.append(index)
            keys += shard_keys
            labels.append(shard_labels)
            bar.advance()
    return indexes, keys, np.concatenate(labels) if labels else np.zeros(0, np.int64)


def _write_parts(
    out: Path,
    shards,
    indexes: list[ShardIndex | None],
    keys: list[str],
    dest: np.ndarray,
    provenance: dict,
    max_per_shard: int,
    force: bool,
    hidden_labels: np.ndarray | None,
) -> dict:
    """The second pass: copy every sample to its parts (atomically, all three or nothing); the parts' manifests.
    With `hidden_labels` (the source's labels) the unlabelled part's true labels are kept beside it."""
    manifest = shards.origin
    common = dict(input_spec=shards.input_spec, classes=shards.classes, max_per_shard=max_per_shard)
    with atomic_dir(out, force=force) as tmp:
        writers = {
            LABELED: ShardWriter(tmp / "labeled", labeled=True, provenance={**provenance, "part": "labeled"}, **common),
            VAL: ShardWriter(tmp / "val", labeled=True, provenance={**provenance, "part": "val"}, **common),
            UNLABELED: ShardWriter(tmp / "unlabeled", labeled=False, provenance={**provenance, "part": "unlabeled"}, **common),
        }
        first = 0
        with log.progress("split: copy", total=len(keys), unit="samples") as bar:
            for path, index, count, sha256 in zip(shards.shard_paths, indexes, shards.shard_counts, shards.shard_checksums):
                flags = dest[first : first + count].tolist()
                with fetched(path) as local:
                    if index is not None:
                        _copy_raw(local, index, flags, writers, sha256, manifest, shards.input_spec)
                    else:
                        args = (sha256, manifest, shards.num_classes, shards.input_spec)
                        _copy_decoded(local, keys[first : first + count], flags, writers, *args)
                first += count
                bar.advance(count)
        if hidden_labels is not None:
            write_hidden_labels(tmp, keys, hidden_labels, (dest & UNLABELED) != 0, shards.classes)
        return {name: writers[flag].close() for name, flag in (("labeled", LABELED), ("unlabeled", UNLABELED), ("val", VAL))}


def _check_unique(keys: list[str], shards) -> None:
    if len(set(keys)) == len(keys):
        return
    where: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in where:
            shard_of = np.cumsum(shards.shard_counts)
            a, b = (shards.shard_paths[int(np.searchsorted(shard_of, j, side="right"))] for j in (where[key], i))
            raise ShardError(f"sample key {key!r} appears twice in {shards.root} (in {a} and {b}); keys must be unique.")
        where[key] = i


def _mismatch(path: Path, manifest: Path) -> ShardError:
    return ShardError(
        f"{path}: sha256 does not match {manifest}; the shard changed or is corrupt "
        "(`mpl data info --verify` lists what is wrong). Nothing was written."
    )


_READ_BLOCK = 4 << 20  # the source shard is read in blocks of this size
_HASH_AHEAD = 4  # blocks the hashing thread may lag behind (bounds the memory: 16 MB)


def _copy_raw(
    path: Path, index: ShardIndex, flags: list[int], writers: dict, sha256: str, manifest: Path, spec: InputSpec
) -> None:
    """Copy each sample's tar members unchanged (minus `cls` for unlabeled/), hashing the whole shard on the way
    and decoding each sample's input (`_check_input`).

    The shard is read in 4 MB blocks; a second thread hashes each block (hashlib releases the GIL) while
    this one cuts the samples out of the same bytes, so what is checked is exactly what is copied."""
    check_input = lambda raw, key: _check_input(raw, key, path, spec)  # noqa: E731
    digest = hashlib.sha256()
    with ThreadPoolExecutor(1) as hasher, open(path, "rb", buffering=0) as fh:
        hashed: list = []
        block, block_start = b"", 0  # bytes of the file from block_start on, read and queued for hashing

        def read_block() -> bytes:
            data = fh.read(_READ_BLOCK)
            if data:
                hashed.append(hasher.submit(digest.update, data))
                if len(hashed) > _HASH_AHEAD:
                    hashed.pop(0).result()
            return data

        for key, label, (start, end, cls_start, cls_end), flag in zip(
            index.keys, index.labels.tolist(), index.bounds.tolist(), flags
        ):
            while end > block_start + len(block):
                more = read_block()
                if not more:
                    raise ShardError(
                        f"{path} is shorter than its index says (sample {key!r}); is another process writing the shard set?"
                    )
                block, block_start = block[start - block_start :] + more, start
            view = memoryview(block)
            raw = view[start - block_start : end - block_start]
            check_input(raw, key)
            if flag & LABELED:
                writers[LABELED].write_raw(key, label, raw)
            if flag & VAL:
                writers[VAL].write_raw(key, label, raw)
            if flag & UNLABELED:
                a, b = cls_start - start, cls_end - start
                writers[UNLABELED].write_raw(key, None, b"".join((raw[:a], raw[b:])) if a >= 0 else raw)
        while read_block():  # the end-of-archive marker and padding
            pass
        for pending in hashed:
            pending.result()
    if sha256 is not None and digest.hexdigest() != sha256:  # None: a manifest-less set has no checksums
        raise _mismatch(path, manifest)


def _check_input(raw: memoryview, key: str, path: Path, spec: InputSpec) -> None:
    """Decode the input member of one sample's tar members `raw` (headers already checked by `index_shard`) as
    every reader of the new sets will: a corrupt image or one of another shape stops the split, naming it."""
    offset = 0
    while offset + BLOCK <= len(raw):
        header = bytes(raw[offset : offset + BLOCK])
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        ext = name.partition(".")[2]
        if ext in INPUT_EXTENSIONS:
            decode_input(Sample(key, ext, bytes(raw[offset + BLOCK : offset + BLOCK + size])), path, spec)
            return
        offset += BLOCK + size + (-size % BLOCK)


def _copy_decoded(
    path: Path, keys: list[str], flags: list[int], writers: dict, sha256: str, manifest: Path, num_classes: int, spec: InputSpec
) -> None:
    """The path through tarfile, for shards `index_shard` leaves to it: members are re-written by ShardWriter."""
    if sha256 is not None and sha256_file(path) != sha256:
        raise _mismatch(path, manifest)
    count = 0
    for sample in read_shard(path, num_classes=num_classes):
        if count >= len(keys) or sample.key != keys[count]:
            raise ShardError(
                f"{path}: sample {sample.key!r} changed between the two passes; is another process writing the shard set?"
            )
        decode_input(sample, path, spec)
        for flag, writer in writers.items():
            if flags[count] & flag:
                writer.write(sample if flag != UNLABELED else Sample(sample.key, sample.ext, sample.data, None, sample.extras))
        count += 1
    if count != len(keys):
        raise ShardError(f"{path}: the shard changed between the two passes; is another process writing the shard set?")

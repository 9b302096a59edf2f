"""`mpl data split SRC --out DIR`: a seeded, class-balanced split into labeled/, unlabeled/ and val/.

Streaming, in two passes: the first reads only tar headers and labels to choose the split, the
second copies each sample's encoded bytes to its destination. Images are never decoded and never
all held in memory, so this scales to ImageNet-size sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpltools import __version__, log
from mpltools.atomic import atomic_dir
from mpltools.data.shards import Sample, ShardError, ShardWriter, open_shard_set, read_keys_and_labels, read_shard
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


def _per_class(total: int | None, per_class: int | None, fraction: float | None, counts: np.ndarray,
               rng: np.random.Generator, what: str) -> np.ndarray:
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
    n_lab = counts - n_val if sizes.labeled_rest else _per_class(
        sizes.labeled_total, sizes.labeled_per_class, sizes.labeled_fraction, counts, rng, "labelled")
    for c in range(num_classes):
        if n_lab[c] + n_val[c] > counts[c] or n_lab[c] < 0:
            raise MplError(f"class {classes[c]!r} has {counts[c]} samples, fewer than the {n_lab[c]} labelled + "
                           f"{n_val[c]} validation asked for; ask for fewer per class.")
    dest = np.zeros(len(labels), np.uint8)
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        dest[members[: n_lab[c]]] = LABELED
        dest[members[n_lab[c]: n_lab[c] + n_val[c]]] = VAL
        dest[members[n_lab[c] + n_val[c]:]] = UNLABELED
    if sizes.include_labeled_in_unlabeled:
        dest[dest == LABELED] |= UNLABELED
    return dest


def run(src: str, out: Path, sizes: SplitSizes, *, seed: int, preset: str | None, max_per_shard: int,
        force: bool, command: str) -> dict:
    shards = open_shard_set(src)
    shards.require_labels("splitting")
    keys: list[str] = []
    labels: list[int] = []
    with log.progress("split: read labels", total=len(shards.shard_paths), unit="shards") as bar:
        for path in shards.shard_paths:
            for key, label in read_keys_and_labels(path):
                if label is None:
                    raise ShardError(f"{path}: sample {key!r} has no label in a labelled shard set.")
                if not 0 <= label < shards.num_classes:
                    raise ShardError(f"{path}: sample {key!r} has label {label}, outside 0..{shards.num_classes - 1}.")
                keys.append(key)
                labels.append(label)
            bar.advance()
    if len(keys) != shards.num_samples:
        raise ShardError(f"{shards.root}: the shards hold {len(keys)} samples but manifest.json says {shards.num_samples}; re-create the shard set.")
    dest = choose(np.asarray(labels, np.int64), shards.num_classes, sizes, seed, shards.classes)
    provenance = {
        "command": command, "source_manifest_sha256": shards.manifest_sha256, "source": str(src), "seed": seed,
        "preset": preset, "sizes": {k: v for k, v in vars(sizes).items() if v not in (None, False)},
        "include_labeled_in_unlabeled": sizes.include_labeled_in_unlabeled, "mpltools_version": __version__,
    }
    common = dict(input_spec=shards.input_spec, classes=shards.classes, max_per_shard=max_per_shard)
    with atomic_dir(out, force=force) as tmp:
        writers = {
            LABELED: ShardWriter(tmp / "labeled", labeled=True, provenance={**provenance, "part": "labeled"}, **common),
            VAL: ShardWriter(tmp / "val", labeled=True, provenance={**provenance, "part": "val"}, **common),
            UNLABELED: ShardWriter(tmp / "unlabeled", labeled=False, provenance={**provenance, "part": "unlabeled"}, **common),
        }
        index = 0
        with log.progress("split: copy", total=len(keys), unit="samples") as bar:
            for path in shards.shard_paths:
                for sample in read_shard(path, num_classes=shards.num_classes):
                    if index >= len(keys) or sample.key != keys[index]:
                        raise ShardError(f"{path}: sample {sample.key!r} changed between the two passes; is another process writing the shard set?")
                    for flag, writer in writers.items():
                        if dest[index] & flag:
                            kept = sample if flag != UNLABELED else Sample(sample.key, sample.ext, sample.data, None, sample.extras)
                            writer.write(kept)
                    index += 1
                    bar.advance()
        manifests = {name: writers[flag].close() for name, flag in (("labeled", LABELED), ("unlabeled", UNLABELED), ("val", VAL))}
    report = {"out": str(out), "seed": seed}
    for name, m in manifests.items():
        report[name] = {"path": str(out / name), "num_samples": m["num_samples"], "class_counts": m["class_counts"]}
    return report

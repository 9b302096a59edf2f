"""`mpl data filter-unlabeled UNLABELED --model CKPT --out DIR`: choose the unlabelled images worth
training on, as the paper (§3.3) and Noisy Student did with JFT (reference/mpl-algorithm.md §5.3).

1. Score: the checkpoint predicts every image (its eval view and normalisation, from its metadata);
   an image's score is the softmax probability of its predicted class. Images whose decoded pixels
   are those of an image in an `--exclude` set (sha256 of the pixels: any lossless re-encoding
   matches), or with `--near-duplicates` whose difference hash is within `--phash-distance` bits of
   one, are dropped before scoring.
2. Select: with `--threshold t` only images with score >= t; with `--top-k K` the K highest scores
   of each predicted class (ties: the earlier image in the set). `--balance` writes each kept image
   of a class with n < K images K // n or K // n + 1 times (seeded), so that class has exactly K
   (Noisy Student's upsampling); the copies get keys `<key>-dup1`, `<key>-dup2`, ...
3. Write: a new unlabelled shard set with the kept samples' original encoded bytes (not
   re-encoded), in the input set's order, classes = the checkpoint's; `--store-topk N` adds the
   checkpoint's N most likely classes to each sample as `topk.npy` (see data/predictions.py). The
   manifest's provenance records the rule, per-class counts, the duplicates dropped and the
   checkpoint's sha256.

Memory is bounded by K x classes (the selection, `TopKPerClass`), not by the number of images;
without --top-k it grows by 16 bytes (plus 8 per --store-topk class) per kept image. Under
`accelerate launch` every process scores fixed chunks of the set (`eval_chunks`, whole shards when
there are enough), the main process merges the selections (exactly: the selection does not depend
on how candidates are grouped) and writes the output, byte-identical to a single-process run.
`--workers N` decodes and hashes in N loader processes beside the model (default: none on CPU).
A killed run leaves nothing but a hidden temporary folder, removed by the next run, which starts over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mpltools import __version__, log
from mpltools import runtime as rt
from mpltools.atomic import atomic_dir, check_can_write
from mpltools.checkpoint import CheckpointMeta, check_compatible, file_sha256, load_model
from mpltools.data import predictions
from mpltools.data.chunks import eval_chunks, shard_samples
from mpltools.data.codecs import Sample, decode_input
from mpltools.data.filtering import NearDuplicateIndex, TopKPerClass, balance_occurrences, dhash, pixel_digest
from mpltools.data.format import Manifest
from mpltools.data.loaders import to_model_input
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardSet, ShardWriter
from mpltools.errors import MplError, UsageError

MAX_PHASH_DISTANCE = 32
MAX_EXAMPLES = 100  # duplicates listed in the manifest (the first keys in sort order; all are counted)


@dataclass(frozen=True)
class Rule:
    top_k: int | None = None
    threshold: float | None = None
    balance: bool = False
    near_duplicates: bool = False
    phash_distance: int = 4
    store_topk: int = 0
    seed: int = 0

    def check(self) -> None:
        if self.top_k is None and self.threshold is None:
            raise UsageError("say what to keep: --top-k K (per predicted class), --threshold P (confidence), or both.")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}.")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"--threshold is a probability and must be in [0, 1], got {self.threshold}.")
        if self.balance and self.top_k is None:
            raise UsageError("--balance duplicates images up to K per class, so it needs --top-k K.")
        if not 0 <= self.phash_distance <= MAX_PHASH_DISTANCE:
            raise UsageError(f"--phash-distance must be in 0..{MAX_PHASH_DISTANCE} bits, got {self.phash_distance}.")
        if self.store_topk < 0:
            raise UsageError(f"--store-topk must be >= 0, got {self.store_topk}.")


def run(
    unlabeled: str,
    checkpoint: Path,
    out: Path,
    rule: Rule,
    *,
    exclude: list[str],
    batch_size: int = 256,
    workers: int | None = None,
    max_per_shard: int = 10_000,
    ignore_data_classes: bool = False,
    force: bool = False,
    command: str = "",
) -> dict:
    rule.check()
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}.")
    runtime = rt.start("auto", 0, 0)
    if runtime.is_main:
        check_can_write(Path(out), force)  # fail now, not after scoring
    model, meta = load_model(checkpoint, runtime.device)
    shards = open_shard_set(unlabeled)
    shards.require_manifest("filtering")
    _check_fits(meta, shards, Path(checkpoint), str(unlabeled), ignore_data_classes)
    if rule.store_topk > meta.num_classes:
        raise UsageError(f"--store-topk {rule.store_topk} is more than the checkpoint's {meta.num_classes} classes.")
    if rule.near_duplicates and shards.input_spec.kind != "image":
        raise UsageError(f"--near-duplicates compares images, but {unlabeled} holds vectors.")
    refs = _references(exclude, rule)

    workers = rt.default_workers(runtime) if workers is None else workers
    selection, stats = _score(model, meta, shards, runtime, rule, refs, batch_size, workers)
    parts = runtime.gather_to_main((selection.arrays(), stats))
    if runtime.is_main and runtime.world > 1:
        selection = TopKPerClass(meta.num_classes, rule.top_k, rule.store_topk)
        stats = _sum_stats([s for _, s in parts])
        for arrays, _ in parts:
            selection.merge(arrays)
    return runtime.on_main(
        lambda: _write(
            out,
            shards,
            meta,
            Path(checkpoint),
            selection.arrays(),
            stats,
            rule,
            exclude,
            max_per_shard,
            force,
            command,
            runtime.world,
        )
    ) or {"world_size": runtime.world}


def _check_fits(meta: CheckpointMeta, shards: ShardSet, path: Path, data: str, ignore_data_classes: bool) -> None:
    ignore_data_classes = ignore_data_classes or shards.classes_unknown  # manifest-less unlabelled shards name no classes
    check_compatible(
        meta,
        meta.num_classes if ignore_data_classes else shards.num_classes,
        shards.input_spec.to_json(),
        path,
        data,
        classes=None if ignore_data_classes else shards.classes,
        hint=" If the set's class names mean nothing (e.g. an ImageFolder import of an unlabelled pool), pass --ignore-data-classes.",
    )


# ---------------------------------------------------------------- 1. references and scoring


@dataclass
class References:
    exact: dict[bytes, str]  # pixel digest -> "<set>:<key>"
    near: NearDuplicateIndex | None
    near_keys: list[str]


def _references(locations: list[str], rule: Rule) -> References:
    exact: dict[bytes, str] = {}
    hashes: list[int] = []
    keys: list[str] = []
    for location in locations:
        ref = open_shard_set(location)
        spec = ref.input_spec
        for path in ref.shard_paths:
            for _, sample in shard_samples(path, ref.num_classes):
                decoded = decode_input(sample, path, spec)
                name = f"{location}:{sample.key}"
                exact.setdefault(pixel_digest(decoded), name)
                if rule.near_duplicates:
                    if decoded.dtype != np.uint8:
                        raise UsageError(f"--near-duplicates compares images, but --exclude {location} holds vectors.")
                    hashes.append(dhash(decoded))
                    keys.append(name)
    if locations:
        log.info(f"excluding {len(exact):,} distinct images of {', '.join(map(str, locations))}")
    near = NearDuplicateIndex(np.asarray(hashes, np.uint64), rule.phash_distance) if rule.near_duplicates else None
    return References(exact, near, keys)


def _score(model, meta: CheckpointMeta, shards: ShardSet, runtime, rule: Rule, refs: References, batch_size: int, workers: int):
    """This process's chunks: drop excluded images, score the rest, keep the candidates in a TopKPerClass."""
    aug, norm = meta.eval_view()
    selection = TopKPerClass(meta.num_classes, rule.top_k, rule.store_topk)
    stats = {"scored": 0, "exact": 0, "near": 0, "below_threshold": 0, "examples": []}

    def duplicate(sample: Sample, decoded: np.ndarray) -> dict | None:  # runs in the loader workers
        match, kind = refs.exact.get(pixel_digest(decoded)), "exact"
        if match is None and refs.near is not None:
            j = refs.near.match(dhash(decoded))
            match, kind = (refs.near_keys[j] if j >= 0 else None), "near"
        return None if match is None else {"key": sample.key, "kind": kind, "matches": match}

    model.eval()
    log.info(f"scoring {shards.root} with {meta.architecture} ({meta.role}, {meta.num_classes} classes)")
    total = shards.num_samples if runtime.world == 1 else None  # the bar counts the main process's images
    with torch.no_grad(), log.progress("filter: score", total=total, unit="images", enabled=runtime.is_main) as bar:
        chunks = eval_chunks(
            shards, aug, batch_size, runtime.rank, runtime.world, inspect=duplicate if refs.exact else None, workers=workers
        )
        for chunk in chunks:
            for record in chunk.rejected:
                stats[record["kind"]] += 1
                stats["examples"].append(record)
            if len(stats["examples"]) > 2 * MAX_EXAMPLES:  # keep the first keys only: bounded, and the same for any split
                stats["examples"] = sorted(stats["examples"], key=lambda e: e["key"])[:MAX_EXAMPLES]
            if chunk.x is None:
                continue
            with runtime.autocast():
                logits = model(to_model_input(chunk.x, norm, runtime.device))
            probs = logits.float().softmax(dim=1)
            score, pred = (t.cpu().numpy() for t in probs.max(dim=1))
            keep = score >= rule.threshold if rule.threshold is not None else np.ones(len(score), bool)
            top_p = top_i = None
            if rule.store_topk:
                top_p, top_i = predictions.topk_rows(
                    probs[torch.from_numpy(keep).to(probs.device)].cpu().numpy(), rule.store_topk
                )
            index = (np.int64(chunk.shard) << np.int64(32)) | chunk.positions
            selection.add(index[keep], pred[keep], score[keep], top_p, top_i)
            stats["scored"] += len(score)
            stats["below_threshold"] += int((~keep).sum())
            bar.advance(len(score))
    stats["examples"] = sorted(stats["examples"], key=lambda e: e["key"])[:MAX_EXAMPLES]
    return selection, stats


def _sum_stats(parts: list[dict]) -> dict:
    total = {k: sum(p[k] for p in parts) for k in ("scored", "exact", "near", "below_threshold")}
    examples = sorted((e for p in parts for e in p["examples"]), key=lambda e: e["key"])
    return {**total, "examples": examples[:MAX_EXAMPLES]}


# ---------------------------------------------------------------- 2-3. selection and output


def _write(
    out: Path,
    shards: ShardSet,
    meta: CheckpointMeta,
    checkpoint: Path,
    chosen: dict,
    stats: dict,
    rule: Rule,
    exclude: list[str],
    max_per_shard: int,
    force: bool,
    command: str,
    world: int,
) -> dict:
    """Write the chosen samples (with --balance's copies) as a new unlabelled set; the command's report."""
    k = meta.num_classes
    occurrences = (
        balance_occurrences(chosen["cls"], rule.top_k, rule.seed) if rule.balance else np.ones(len(chosen["cls"]), np.int64)
    )
    kept = np.bincount(chosen["cls"], minlength=k)
    written = np.bincount(chosen["cls"], weights=occurrences, minlength=k).astype(np.int64)
    dropped = _dropped(stats, rule, exclude)
    provenance = _provenance(shards, meta, checkpoint, stats, rule, dropped, kept, written, command)
    manifest = _write_shards(out, shards, meta, chosen, occurrences, rule, provenance, max_per_shard, force)
    total = int(occurrences.sum())
    log.info(
        f"kept {len(occurrences):,} of {stats['scored']:,} scored images ({total:,} with copies); "
        f"dropped {stats['exact']:,} exact and {stats['near']:,} near duplicates"
    )
    return {
        "out": str(out),
        "num_samples": Manifest(manifest).num_samples,
        "kept": len(occurrences),
        "scored": stats["scored"],
        "per_class_kept": kept.tolist(),
        "per_class_written": written.tolist(),
        "duplicates_dropped": dropped,
        "below_threshold": stats["below_threshold"],
        "checkpoint_sha256": provenance["checkpoint_sha256"],
        "world_size": world,
    }


def _dropped(stats: dict, rule: Rule, exclude: list[str]) -> dict:
    """What the manifest and the report say about the duplicates dropped."""
    return {
        "exact": stats["exact"],
        "near": stats["near"],
        "exclude": [str(e) for e in exclude],
        "near_duplicates": rule.near_duplicates,
        "phash_distance": rule.phash_distance if rule.near_duplicates else None,
        "examples": sorted(stats["examples"], key=lambda e: e["key"]),
    }


def _provenance(
    shards: ShardSet,
    meta: CheckpointMeta,
    checkpoint: Path,
    stats: dict,
    rule: Rule,
    dropped: dict,
    kept: np.ndarray,
    written: np.ndarray,
    command: str,
) -> dict:
    """The new set's manifest provenance: source, checkpoint, rule and counts."""
    return {
        "command": command,
        "source": str(shards.root),
        "source_manifest_sha256": shards.manifest_sha256,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "checkpoint_role": meta.role,
        "rule": {
            "top_k": rule.top_k,
            "threshold": rule.threshold,
            "balance": rule.balance,
            "seed": rule.seed,
            "score": "softmax probability of the predicted class (eval view)",
            "ties": "earlier sample in the source set",
        },
        "scored": stats["scored"],
        "below_threshold": stats["below_threshold"],
        "duplicates_dropped": dropped,
        "per_class_kept": kept.tolist(),
        "per_class_written": written.tolist(),
        "store_topk": rule.store_topk,
        "mpltools_version": __version__,
    }


def _write_shards(
    out: Path,
    shards: ShardSet,
    meta: CheckpointMeta,
    chosen: dict,
    occurrences: np.ndarray,
    rule: Rule,
    provenance: dict,
    max_per_shard: int,
    force: bool,
) -> dict:
    """Copy the chosen samples, shard by shard in the source's order, into `out` (atomically); its manifest."""
    extras = (predictions.TOPK,) if rule.store_topk else ()
    with atomic_dir(out, force=force) as tmp:
        writer = ShardWriter(
            tmp,
            input_spec=shards.input_spec,
            classes=meta.classes,
            labeled=False,
            provenance=provenance,
            max_per_shard=max_per_shard,
            extras=extras,
        )
        shard_of = chosen["index"] >> 32
        with log.progress("filter: write", total=int(occurrences.sum()), unit="samples") as bar:
            for s in np.unique(shard_of):
                rows = np.flatnonzero(shard_of == s)
                _copy_shard(shards.shard_paths[int(s)], shards.num_classes, rows, chosen, occurrences, rule, writer)
                bar.advance(int(occurrences[rows].sum()))
        return writer.close()


def _copy_shard(
    path: Path, num_classes: int | None, rows: np.ndarray, chosen: dict, occurrences: np.ndarray, rule: Rule, writer: ShardWriter
) -> None:
    """Copy the chosen samples of one shard (rows of `chosen`, in position order) with their copies."""
    wanted = (chosen["index"][rows] & 0xFFFFFFFF).tolist()
    chosen_positions = set(wanted)
    j = 0
    for position, sample in shard_samples(path, num_classes, chosen_positions.__contains__):
        if position != wanted[j]:
            raise MplError(f"{path} changed while it was being filtered (sample {wanted[j]} is missing); run the command again.")
        row = rows[j]
        extras = (
            {predictions.TOPK: predictions.encode_topk(chosen["top_p"][row], chosen["top_i"][row])} if rule.store_topk else {}
        )
        writer.write(Sample(sample.key, sample.ext, sample.data, None, extras))
        for copy in range(1, int(occurrences[row])):
            writer.write(Sample(f"{sample.key}-dup{copy}", sample.ext, sample.data, None, extras))
        j += 1
        if j == len(wanted):
            break
    if j != len(wanted):
        raise MplError(f"{path} changed while it was being filtered (sample {wanted[j]} is missing); run the command again.")

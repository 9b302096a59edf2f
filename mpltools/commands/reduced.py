"""`mpl reduced predict` and `mpl reduced train`: Reduced Meta Pseudo Labels (paper §4, Appendix E;
reference/mpl-algorithm.md §4), in two steps.

Step 1, `mpl reduced predict LARGE_CKPT --data SHARDS --out PRED`: the large, already trained
teacher predicts every image of a set once (its eval view and normalisation, from its metadata).
PRED is a copy of SHARDS (same keys, order, encoded bytes and labels) where each sample carries the
prediction: the full logits `teacher_logits.npy` (float16 by default, `--dtype float32`), or with
`--topk N` only the N most likely classes `topk.npy` (see data/predictions.py for how a
distribution is rebuilt from them). Its manifest records the teacher's sha256 and SHARDS' manifest
sha256. Run it on the unlabelled set and on the labelled set (the reduced teacher's supervised
loss reads the labelled predictions). Under `accelerate launch` the processes predict fixed chunks
(`eval_chunks`) and the main process writes, byte-identical to one process.

Step 2, `mpl reduced train RECIPE`: `mpl train`'s loop (trainer.fit) and MPL step (mpl_step) with
the teacher replaced by a `reduced_teacher` (models/reduced_teacher.py): a small MLP over the stored
logits, residual and zero-initialised, so it starts as the large teacher itself. The streams
deliver each image's stored logits with it; the student learns from pseudo labels drawn from the
reduced teacher, whose update is the MPL feedback (+ its supervised loss on the labelled
predictions). The large checkpoint is never loaded in this step. The recipe's data.labeled and
data.unlabeled are prediction sets from step 1 (of the same large teacher); data.val is a plain
labelled set (the student is validated on images). The run folder holds `student.safetensors` (a
normal student: `mpl eval` and `mpl finetune` take it), `reduced_teacher.safetensors` (role
"reduced_teacher"; `mpl eval` refuses it: it reads predictions, not images), metrics.jsonl and
resume states; re-running the same command resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import torch

from mpltools import __version__, log, preflight, trainer
from mpltools import runtime as rt
from mpltools.atomic import atomic_dir, check_can_write
from mpltools.checkpoint import check_compatible, file_sha256, load_model
from mpltools.config import Recipe
from mpltools.data import fetching, predictions
from mpltools.data.chunks import eval_chunks, shard_samples
from mpltools.data.codecs import Sample
from mpltools.data.format import Manifest
from mpltools.data.loaders import to_model_input
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardSet, ShardWriter
from mpltools.errors import MplError, UsageError

CONTENT = "reduced-mpl teacher predictions"
DTYPES = ("float16", "float32")


# ---------------------------------------------------------------- step 1: predict


def predict(
    checkpoint: Path,
    data: str,
    out: Path,
    *,
    topk: int = 0,
    logits: bool = False,
    dtype: str = "float16",
    batch_size: int = 256,
    workers: int | None = None,
    max_per_shard: int | None = None,
    ignore_data_classes: bool = False,
    force: bool = False,
    command: str = "",
) -> dict:
    if logits and topk:
        raise UsageError("--logits and --topk exclude each other: store the full logits or the top N classes.")
    if topk < 0 or dtype not in DTYPES or batch_size < 1:
        raise UsageError(f"--topk must be >= 0 (0 = full logits), --dtype one of {', '.join(DTYPES)} and --batch-size >= 1.")
    runtime = rt.start("auto", 0, 0)
    if runtime.is_main:
        check_can_write(Path(out), force)
    model, meta = load_model(checkpoint, runtime.device)
    shards = open_shard_set(data)
    _check_data(meta, shards, Path(checkpoint), data, topk, ignore_data_classes)
    member = predictions.TOPK if topk else predictions.LOGITS
    view = meta.eval_view()
    provenance = _provenance(checkpoint, meta, shards, data, member, topk, dtype, command)
    workers = rt.default_workers(runtime) if workers is None else workers
    model.eval()
    log.info(f"predicting {data} with {checkpoint} ({meta.architecture}); storing {member}")
    settings = dict(view=view, topk=topk, dtype=dtype, batch_size=batch_size, workers=workers)
    manifest = _predict_and_write(model, meta, shards, runtime, out, force, provenance, max_per_shard, settings)
    runtime.finish()
    if not runtime.is_main:
        return {"world_size": runtime.world}
    return {
        "out": str(out),
        "num_samples": Manifest(manifest).num_samples,
        "member": member,
        "teacher_sha256": provenance["teacher_sha256"],
        "source_manifest_sha256": shards.manifest_sha256,
        "world_size": runtime.world,
    }


def _check_data(meta, shards: ShardSet, checkpoint: Path, data: str, topk: int, ignore_data_classes: bool) -> None:
    """The set has a manifest and fits the teacher (inputs, classes unless ignored); --topk fits its classes."""
    shards.require_manifest("reduced predict")
    if ignore_data_classes and shards.labeled:
        raise UsageError(f"--ignore-data-classes is for unlabelled sets whose class names mean nothing; {data} is labelled.")
    check_compatible(
        meta,
        meta.num_classes if ignore_data_classes else shards.num_classes,
        shards.input_spec.to_json(),
        checkpoint,
        str(data),
        classes=None if ignore_data_classes else shards.classes,
        hint=" For an unlabelled set whose class names mean nothing, pass --ignore-data-classes.",
    )
    if topk > meta.num_classes:
        raise UsageError(f"--topk {topk} is more than the teacher's {meta.num_classes} classes.")


def _provenance(checkpoint: Path, meta, shards: ShardSet, data: str, member: str, topk: int, dtype: str, command: str) -> dict:
    """The prediction set's manifest provenance (`keys_sha256` is added once every key was read)."""
    return {
        "command": command,
        "content": CONTENT,
        "prediction": {
            "member": member,
            "kind": predictions.KINDS[member],
            "dtype": None if topk else dtype,
            "topk": topk or None,
        },
        "teacher": str(checkpoint),
        "teacher_sha256": file_sha256(Path(checkpoint)),
        "teacher_role": meta.role,
        "teacher_architecture": meta.architecture,
        "teacher_step": meta.step,
        "source": str(data),
        "source_manifest_sha256": shards.manifest_sha256,
        "source_num_samples": shards.num_samples,
        "mpltools_version": __version__,
    }


def _predict_and_write(
    model, meta, shards: ShardSet, runtime, out: Path, force: bool, provenance: dict, max_per_shard: int | None, settings: dict
) -> dict | None:
    """Every process predicts its chunks of each shard in turn; the main process writes the shard with the
    predictions (atomically) and returns the new set's manifest, the other processes None."""
    member = provenance["prediction"]["member"]
    keys_digest = hashlib.sha256()
    manifest = None
    with (
        atomic_dir(out, force=force) if runtime.is_main else contextlib.nullcontext() as tmp,
        torch.no_grad(),
        log.progress("reduced: predict", total=shards.num_samples, unit="images", enabled=runtime.is_main) as bar,
    ):
        writer = None
        if runtime.is_main:
            writer = ShardWriter(
                tmp,
                input_spec=shards.input_spec,
                classes=meta.classes,
                labeled=bool(shards.labeled),
                provenance=provenance,
                max_per_shard=max_per_shard or max(shards.shard_counts + [1]),
                extras=(member,),
            )
        # A remote shard is fetched once (the next one meanwhile) and read by the workers and the writer alike.
        for i in fetching.ahead(shards.shard_paths, range(len(shards.shard_paths))):
            with fetching.fetched(path := shards.shard_paths[i]):
                parts = runtime.gather_to_main(_predict_shard(model, shards, i, runtime, **settings))
                if writer is not None:
                    _write_shard(writer, path, parts, shards, member, keys_digest)
                    bar.advance(shards.shard_counts[i])
        if writer is not None:
            provenance["keys_sha256"] = keys_digest.hexdigest()
            manifest = writer.close()
    return manifest


def _predict_shard(
    model, shards: ShardSet, i: int, runtime, *, view, topk: int, dtype: str, batch_size: int, workers: int
) -> list:
    """This process's chunks of shard i: (positions in the shard, encoded predictions) per chunk."""
    aug, norm = view
    path = shards.shard_paths[i]
    mine = []
    for chunk in eval_chunks(shards, aug, batch_size, runtime.rank, runtime.world, shard_indices=[i], workers=workers):
        with runtime.autocast():
            logits = model(to_model_input(chunk.x, norm, runtime.device)).float()
        mine.append((chunk.positions, _encode(logits, topk, dtype, path, chunk.keys)))
    return mine


def _write_shard(writer: ShardWriter, path, parts: list, shards: ShardSet, member: str, keys_digest) -> None:
    """Copy shard `path` into `writer`, each sample with its prediction from the processes' `parts`."""
    payloads = {int(p): blob for part in parts for positions, blobs in part for p, blob in zip(positions, blobs)}
    for position, sample in shard_samples(path, shards.num_classes):
        keys_digest.update(sample.key.encode() + b"\n")
        label = sample.label if shards.labeled else None
        if position not in payloads:
            raise MplError(f"{path} changed while it was being read (sample {sample.key!r}); run the command again.")
        writer.write(Sample(sample.key, sample.ext, sample.data, label, {member: payloads.pop(position)}))


def _encode(logits: torch.Tensor, topk: int, dtype: str, path: Path, keys: list[str]) -> list[bytes]:
    if topk:
        probs, classes = predictions.topk_rows(logits.softmax(dim=1).cpu().numpy(), topk)
        return [predictions.encode_topk(p, c) for p, c in zip(probs, classes)]
    values = logits.cpu().numpy().astype(dtype)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise MplError(
            f"{path}: the teacher's logits for sample {keys[int(np.argmax(bad))]!r} are not finite in {dtype}"
            + (" (they exceed float16's range; use --dtype float32)." if dtype == "float16" else ".")
        )
    return [predictions.encode_logits(v, dtype) for v in values]


# ---------------------------------------------------------------- step 2: train


def check_inputs(recipe: Recipe):
    """Step 2's checks before anything is written (also run by `mpl recipes validate`): (labeled, unlabeled, member)."""
    preflight.check_teacher_kind(recipe, reduced=True)
    labeled = _prediction_set(recipe.data.labeled, "data.labeled")
    unlabeled = _prediction_set(recipe.data.unlabeled, "data.unlabeled")
    pl, pu = labeled.provenance, unlabeled.provenance
    if pl["teacher_sha256"] != pu["teacher_sha256"]:
        raise MplError(
            f"{labeled.root} and {unlabeled.root} hold predictions of different large teachers ({pl['teacher']} "
            f"sha256 {pl['teacher_sha256'][:12]}... vs {pu['teacher']} sha256 {pu['teacher_sha256'][:12]}...); "
            "predict both sets with the same checkpoint."
        )
    member = pu["prediction"]["member"]
    if pl["prediction"]["member"] != member:
        raise MplError(
            f"{labeled.root} stores {pl['prediction']['member']} but {unlabeled.root} stores {member}; "
            "predict both sets with the same --topk / --logits choice."
        )
    return labeled, unlabeled, member


def train(recipe: Recipe, out: Path, *, force: bool, command: str) -> dict:
    labeled, unlabeled, member = check_inputs(recipe)
    pu = unlabeled.provenance
    if recipe.method.uda_weight:
        log.warn(
            "method.uda_weight has no effect in Reduced MPL: the reduced teacher reads the same stored prediction for both views."
        )
    report = trainer.fit(
        recipe,
        out,
        force=force,
        command=command,
        teacher_inputs=member,
        student=trainer.Output(
            "student.safetensors", "student", extra={"reduced_mpl": True, "large_teacher_sha256": pu["teacher_sha256"]}
        ),
        teacher=trainer.Output(
            "reduced_teacher.safetensors",
            "reduced_teacher",
            extra={
                "reads": member,
                "large_teacher": pu["teacher"],
                "large_teacher_sha256": pu["teacher_sha256"],
                "large_teacher_architecture": pu["teacher_architecture"],
            },
        ),
    )
    if "teacher" in report:
        report["reduced_teacher"] = report.pop("teacher")
    return report


def _prediction_set(location: str, key: str) -> ShardSet:
    """A set written by `mpl reduced predict` that still matches the set it describes."""
    if not location:
        raise UsageError(f"{key} is empty: the recipe must name a prediction set made by `mpl reduced predict`.")
    shards = open_shard_set(location)
    shards.require_manifest("Reduced MPL")
    p = shards.provenance
    if p.get("content") != CONTENT:
        raise MplError(
            f"{location} ({key}) holds no stored teacher predictions; make them with `mpl reduced predict "
            f"LARGE_TEACHER.safetensors --data {location} --out PRED` and set {key} to PRED."
        )
    source = Path(p["source"])
    if shards.num_samples != p["source_num_samples"]:
        raise MplError(
            f"{location} holds {shards.num_samples} samples but claims to describe {source}, which had "
            f"{p['source_num_samples']}; it is damaged: re-run `mpl reduced predict` on {source}."
        )
    if not source.exists():
        log.warn(f"{source}, the set {location} was predicted from, no longer exists; using the stored copy as it is.")
        return shards
    current = open_shard_set(source)
    if current.manifest_sha256 != p["source_manifest_sha256"]:
        raise MplError(
            f"{location} ({key}) does not match {source}, the set it claims to describe: it was predicted from a "
            f"version of {source} with {p['source_num_samples']} samples (manifest sha256 "
            f"{p['source_manifest_sha256'][:12]}...), which now has {current.num_samples} samples (manifest sha256 "
            f"{(current.manifest_sha256 or '?')[:12]}...): different samples or keys. Re-run `mpl reduced predict` on {source}."
        )
    return shards

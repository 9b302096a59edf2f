"""`mpl eval CKPT --data SHARDS`: top-1/top-5, per-class accuracy, loss, calibration (ECE), and
ReaL-style precision@1 given a JSON file of multi-labels per sample key.

Works for any exchanged checkpoint (teacher, student, finetuned, reduced student): the model is
rebuilt from the file's metadata. Under several processes every sample is counted exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mpltools import log, preflight
from mpltools import runtime as rt
from mpltools.atomic import atomic_dir
from mpltools.checkpoint import check_compatible, file_sha256, load_model
from mpltools.data.codecs import InputSpec, Sample, encode_npy
from mpltools.data.loaders import eval_batches, to_model_input
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardWriter
from mpltools.errors import MplError
from mpltools.evaluation import evaluate


def _read_real(path: Path, keys_needed: set[str] | None, num_classes: int) -> dict[str, list[int]]:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MplError(f"cannot read the ReaL labels {path}: {exc}.") from None
    if not isinstance(raw, dict) or not all(
        isinstance(v, list) and all(isinstance(c, int) and 0 <= c < num_classes for c in v) for v in raw.values()
    ):
        raise MplError(
            f"{path} must be a JSON object mapping each sample key to a list of class indices in 0..{num_classes - 1}."
        )
    return raw


def run(
    checkpoint: Path, data: str, *, real: Path | None, predictions: Path | None, batch_size: int, force: bool, command: str
) -> dict:
    runtime = rt.start("auto", 0, 0)
    model, meta = load_model(checkpoint, runtime.device)
    shards = open_shard_set(data)
    shards.require_labels("evaluation")
    classes = None if shards.classes_unknown else shards.classes
    check_compatible(meta, shards.num_classes, shards.input_spec.to_json(), checkpoint, str(data), classes=classes)
    preflight.check_eval(checkpoint, shards, predictions, force, batch_size)
    aug, norm = meta.eval_view()
    real_labels = _read_real(real, None, meta.num_classes) if real else None
    real_hits = torch.zeros(2, dtype=torch.float64, device=runtime.device)  # [hits, counted]
    missing: list[str] = []
    rows: list[tuple[str, np.ndarray, int]] = []

    def on_batch(keys, logits, labels):
        preds = logits.argmax(dim=1).tolist()
        if real_labels is not None:
            for key, pred in zip(keys, preds):
                if key not in real_labels:
                    missing.append(key)
                elif real_labels[key]:  # ReaL drops images whose relabelled set is empty
                    real_hits[0] += pred in real_labels[key]
                    real_hits[1] += 1
        if predictions is not None:
            probs = logits.softmax(dim=1).cpu().numpy().astype(np.float32)
            rows.extend(zip(keys, probs, labels.tolist()))

    batches = eval_batches(shards, aug, batch_size, runtime.rank, runtime.world)
    log.info(f"evaluating {checkpoint} on {data}")
    result = evaluate(
        model,
        batches,
        lambda x: to_model_input(x, norm, runtime.device),
        meta.num_classes,
        runtime.reducer,
        runtime.autocast,
        on_batch,
        classes=meta.classes,
    )
    if real_labels is not None:
        if missing:
            raise MplError(
                f"{real}: {len(missing)} sample key(s) of {data} are not in the ReaL file (e.g. {missing[0]!r}); "
                "the file must describe this evaluation set."
            )
        real_hits = runtime.reducer.mean(real_hits) * runtime.world
        result["real_precision_at_1"] = float(real_hits[0] / real_hits[1]) if real_hits[1] > 0 else None
        result["real_counted"] = int(real_hits[1])
    result.update(
        checkpoint=str(checkpoint),
        checkpoint_role=meta.role,
        checkpoint_sha256=file_sha256(Path(checkpoint)),
        data=str(data),
        world_size=runtime.world,
    )
    if predictions is not None:
        if runtime.world > 1:
            raise MplError("--predictions is only supported in a single process; run `mpl eval` without accelerate launch.")
        _write_predictions(predictions, rows, meta, result, command, force)
        result["predictions"] = str(predictions)
    runtime.finish()  # leave the process group together (gloo can abort a process that exits first)
    return result


def _write_predictions(out: Path, rows, meta, result: dict, command: str, force: bool) -> None:
    """Per-sample class probabilities as a vector shard set: input = probabilities, cls = prediction."""
    k = meta.num_classes
    provenance = {
        "command": command,
        "checkpoint_sha256": result["checkpoint_sha256"],
        "data": result["data"],
        "content": "input = softmax probabilities of the checkpoint, cls = its top-1 class, truth.txt = the true label",
    }
    with atomic_dir(out, force=force) as tmp:
        writer = ShardWriter(
            tmp,
            input_spec=InputSpec("vector", "npy", (k,), "float32"),
            classes=meta.classes,
            labeled=True,
            provenance=provenance,
            extras=("truth.txt",),
        )
        for key, probs, truth in rows:
            writer.write(Sample(key, "npy", encode_npy(probs), int(probs.argmax()), {"truth.txt": str(truth).encode()}))
        writer.close()


def render(result: dict) -> str:
    lines = [
        f"checkpoint  {result['checkpoint']} ({result['checkpoint_role']})",
        f"data        {result['data']} ({result['num_samples']:,} samples)",
        f"top-1       {result['top1']:.4f}",
        f"top-5       {result['top5']:.4f}",
        f"loss        {result['loss']:.4f}",
        f"ECE         {result['ece']:.4f}",
    ]
    if result.get("real_precision_at_1") is not None:
        lines.append(f"ReaL P@1    {result['real_precision_at_1']:.4f} ({result['real_counted']:,} images with labels)")
    worst = sorted(((v, k) for k, v in result["per_class_top1"].items() if v is not None))[:5]
    lines.append("worst classes " + ", ".join(f"{k}={v:.3f}" for v, k in worst))
    return "\n".join(lines)

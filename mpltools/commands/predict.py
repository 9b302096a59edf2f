"""`mpl predict CHECKPOINT INPUTS...`: the checkpoint's most likely classes, with their probabilities, for
image files, folders of images, shard sets, or paths read from stdin (`-`).

One JSON line (or CSV row) per input, in the order given: `path` (the image file, or the shard set), `key`
(a shard set's sample key; absent for a file), `classes` (the top-k class names, most likely first) and
`probs` (their probabilities). A folder is searched recursively for image files, in sorted order; a folder
with `manifest.json`, a brace pattern or a URL is a shard set.

Inputs are prepared exactly as `mpl eval` prepares them: a shard set through the same reader
(`eval_batches`, the checkpoint's eval view and normalisation), an image file through the Python API's
converter (`api_inputs.to_batch`), which gives the same model inputs, bit for bit. The probabilities are
`mpl eval --predictions`' (softmax of the logits, float32).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mpltools import api_inputs, log
from mpltools import runtime as rt
from mpltools.atomic import atomic_file, check_can_write
from mpltools.checkpoint import CheckpointMeta, check_compatible, load_model
from mpltools.data.loaders import eval_batches, to_model_input
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardSet
from mpltools.errors import MplError, UsageError

FORMATS = ("jsonl", "csv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
DEFAULT_TOP_K = 5


def run(
    checkpoint: Path,
    inputs: list[str],
    *,
    out: Path | None,
    fmt: str | None,
    top_k: int | None,
    batch_size: int,
    force: bool,
    stdin=None,
) -> dict:
    fmt = fmt or ("csv" if out is not None and Path(out).suffix.lower() == ".csv" else "jsonl")
    _check_options(fmt, top_k, batch_size)
    if out is not None:
        check_can_write(Path(out), force)
    sources = resolve(inputs, stdin if stdin is not None else sys.stdin)
    runtime = rt.start("auto", 0, 0)
    model, meta = load_model(checkpoint, runtime.device)
    check_compatible(meta, meta.num_classes, None, checkpoint, "images")  # a reduced teacher reads predictions
    if top_k is not None and top_k > meta.num_classes:
        raise UsageError(f"--top-k {top_k} is more than the checkpoint's {meta.num_classes} classes.")
    k = top_k or min(DEFAULT_TOP_K, meta.num_classes)
    classes = list(meta.classes) or [str(i) for i in range(meta.num_classes)]
    shard_sets = {s: _open_shards(s, meta, checkpoint) for s in sources if not isinstance(s, Path)}
    total = sum(1 if isinstance(s, Path) else shard_sets[s].num_samples for s in sources)
    model.eval()
    log.info(f"predicting {total:,} input(s) with {checkpoint} ({meta.architecture}, {meta.num_classes} classes)")
    count = 0
    with _output(out, force) as stream, log.progress("predict", total=total, unit="inputs") as bar:
        write = _writer(stream, fmt, k)
        for ids, x in _batches(sources, shard_sets, meta, batch_size, runtime.device):
            with torch.no_grad(), runtime.autocast():
                logits = model(x).float()
            probs, top = logits.softmax(dim=1).cpu().topk(k, dim=1)
            for (path, key), p, c in zip(ids, probs.tolist(), top.tolist()):
                write(path, key, [classes[i] for i in c], p)
            stream.flush()
            count += len(ids)
            bar.advance(len(ids))
    runtime.finish()
    return {"out": str(out) if out is not None else None, "predictions": count, "format": fmt, "top_k": k}


def _check_options(fmt: str, top_k: int | None, batch_size: int) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not known; choose {' or '.join(FORMATS)}.")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {top_k}.")


# ---------------------------------------------------------------- inputs


def resolve(inputs: list[str], stdin) -> list[Path | str]:
    """Every input in order: an image file (Path) or a shard set location (str). `-` adds the paths on stdin,
    one per line; a folder adds its image files, recursively and sorted. Nothing is read but folder listings,
    so a missing input fails before any output is written."""
    if inputs.count("-") > 1:
        raise UsageError("- (paths on stdin) may be given once.")
    sources: list[Path | str] = []
    for arg in inputs:
        lines = [line.strip() for line in stdin] if arg == "-" else [arg]
        for text in filter(None, lines):
            sources.extend(_expand(text))
    if not sources:
        raise MplError(f"no inputs to predict: {' '.join(inputs)} names no image file or shard set.", exit_code=2)
    return sources


def _expand(text: str) -> list[Path | str]:
    path = Path(text)
    if path.is_file() and not path.name.endswith(".tar"):
        return [path]
    if path.is_dir() and not (path / "manifest.json").is_file():
        images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if images:
            return images
        if not any(path.glob("*.tar")):
            raise MplError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)}) and is not a shard set.")
    elif not path.exists() and "://" not in text and "{" not in text and not text.startswith("pipe:"):
        raise MplError(f"{text} does not exist; give image files, folders of images or shard sets.")
    return [text]  # a shard set: open_shard_set explains a folder of shards without manifest.json


def _open_shards(location: str, meta: CheckpointMeta, checkpoint: Path) -> ShardSet:
    shards = open_shard_set(location)
    check_compatible(meta, meta.num_classes, shards.input_spec.to_json(), checkpoint, location)
    return shards


def _batches(sources, shard_sets: dict, meta: CheckpointMeta, batch_size: int, device) -> Iterator[tuple[list, torch.Tensor]]:
    """([(path, key), ...], model inputs) for every input, in order; files are batched together, a shard set
    is read in batches of its own as `mpl eval` reads it."""
    files: list[Path] = []
    for source in [*sources, None]:
        if isinstance(source, Path):
            files.append(source)
            if len(files) < batch_size:
                continue
        if files:
            yield [(str(f), None) for f in files], torch.cat([_image(f, meta, device) for f in files])
            files = []
        if isinstance(source, str):
            view, norm = meta.eval_view()
            for keys, x, _ in eval_batches(shard_sets[source], view, batch_size):
                yield [(source, key) for key in keys], to_model_input(x, norm, device)


def _image(path: Path, meta: CheckpointMeta, device) -> torch.Tensor:
    """One image file as a model input (1, C, H, W); an unreadable or unfitting file is named (exit 1)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # a full decode: a truncated file fails here
            return api_inputs.to_batch(img, meta, device)
    except api_inputs.InputError as exc:
        raise MplError(f"{path}: {exc.message.removeprefix('predict: ')}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MplError(f"{path} is not a readable image ({exc}); remove it from the inputs or replace it.") from None


# ---------------------------------------------------------------- output


@contextmanager
def _output(out: Path | None, force: bool) -> Iterator[io.TextIOBase]:
    """stdout, or `out` written atomically (nothing at `out` unless every input was predicted)."""
    if out is None:
        yield sys.stdout
        return
    with atomic_file(Path(out), force=force) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        yield fh


def _writer(stream, fmt: str, k: int):
    """A function writing one prediction to `stream` as a JSON line or a CSV row (after a header)."""
    if fmt == "jsonl":

        def write_json(path: str, key: str | None, names: list[str], probs: list[float]) -> None:
            record = {"path": path, **({"key": key} if key is not None else {}), "classes": names, "probs": _short(probs)}
            stream.write(json.dumps(record) + "\n")

        return write_json
    rows = csv.writer(stream, lineterminator="\n")
    rows.writerow(["path", "key", *(f"{what}_{i}" for i in range(1, k + 1) for what in ("class", "prob"))])

    def write_csv(path: str, key: str | None, names: list[str], probs: list[float]) -> None:
        rows.writerow([path, key or "", *(v for pair in zip(names, _short(probs)) for v in pair)])

    return write_csv


def _short(probs: list[float]) -> list[float]:
    """float32 probabilities in their shortest decimal form (0.97, not 0.9700000286102295); exact as float32."""
    import numpy as np

    return [float(str(np.float32(p))) for p in probs]

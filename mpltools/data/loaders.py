"""Data streams for training and evaluation.

Training uses two endless streams, labelled (batch B) and unlabelled (mu*B, weak + strong view of
the same images). Both are deterministic functions of (seed, stream, rank, world size, position),
so a run resumes exactly by skipping to the saved position.

* In-memory mode (small sets: TwoMoon, digits, CIFAR on a big box): every sample is decoded once;
  global batch b takes positions [b*G, (b+1)*G) of a per-epoch permutation, and process r takes its
  slice. Augmentation randomness is keyed by the global position (row p % G of global batch p // G's
  block of uniforms, data/sample_random.py), so 1 process and N processes see exactly the same global
  batch (the multi-process agreement test relies on this).
* Streaming mode (large sets): shards are split across processes and DataLoader workers (or
  samples, when there are fewer shards than slots), read sequentially through a seeded shuffle
  buffer, and decoded only after the buffer. Skipping to a resume position reads only the shards
  the buffer held and the shard in progress (data/slot_reader.py). A
  batch's augmentation randomness is keyed by (its index in this slot, slot, number of slots).
  Sample order then depends on the number of processes and workers (statistically equivalent).

WebDataset loaders are never passed through `accelerator.prepare` (it silently drops samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from mpltools.data import fetching, predictions, transforms
from mpltools.data.chunks import shard_samples
from mpltools.data.sample_random import BatchRandom, Uniforms
from mpltools.data.slot_reader import SlotReader
from mpltools.data.codecs import Sample, decode_input
from mpltools.data.shards import ShardError, ShardSet, read_shard
from mpltools.data.worker_errors import Carrying, unwrap
from mpltools.data.worker_sockets import socket_dir
from mpltools.errors import MplError

LABELED, UNLABELED = 0, 1  # stream ids, part of every seed


@dataclass(frozen=True)
class StreamConfig:
    views: str  # "labeled" (weak view + label) or "unlabeled" (weak + strong view)
    global_batch: int
    seed: int
    stream_id: int
    rank: int = 0
    world: int = 1
    workers: int = 0
    shuffle_buffer: int = 2000
    prefetch: int = 4  # batches each worker may queue (data/sizing.py)
    # Stored per-sample predictions (`teacher_logits.npy` / `topk.npy`, see data.predictions) to deliver
    # with the images, each as float32 logits (B, C) under its own name; they use no randomness, so
    # the images, augmentations and resume positions are the same with or without them.
    extras: tuple[str, ...] = ()
    # Key -> true class of unlabelled samples (data/hidden_labels.py), delivered as "hidden_y" for the
    # diagnostics only; like extras it draws no randomness, so the batches are the same without it.
    hidden_labels: dict | None = None

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.world


def _decode(sample, where, spec) -> np.ndarray:
    return decode_input(sample, where, spec)  # the shape is checked against the manifest's input spec


def load_in_memory(shards: ShardSet) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Decode a whole shard set: inputs (N, ...) uint8 images or float32 vectors, labels, keys."""
    inputs, labels, keys = [], [], []
    spec = shards.input_spec
    for path in shards.shard_paths:
        for sample in read_shard(path, num_classes=shards.num_classes):
            inputs.append(_decode(sample, path, spec))
            labels.append(sample.label if sample.label is not None else -1)
            keys.append(sample.key)
    if not inputs:
        raise ShardError(f"{shards.root} holds no samples.")
    shapes = {x.shape for x in inputs}
    if len(shapes) != 1:
        raise ShardError(f"{shards.root}: inputs have different shapes {sorted(shapes)[:3]}; use streaming mode (data.in_memory = \"no\").")
    lab = np.asarray(labels, np.int64)
    return np.stack(inputs), (lab if (lab >= 0).all() else None), keys


def extra_logits(sample: Sample, names: tuple[str, ...], num_classes: int, where) -> list[np.ndarray]:
    out = []
    for name in names:
        if name not in sample.extras:
            raise ShardError(f"{where}: sample {sample.key!r} has no {name!r} member; the set must be written by "
                             "`mpl reduced predict` (every sample carries the teacher's prediction).")
        label = f"{where}: sample {sample.key!r} member {name!r}"
        out.append(predictions.as_logits(name, predictions.load(sample.extras[name], label), num_classes, label))
    return out


def load_extras_in_memory(shards: ShardSet, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named extras of every sample as float32 logits (N, C), in `load_in_memory`'s order."""
    rows: list[list[np.ndarray]] = []
    for path in shards.shard_paths:
        for sample in read_shard(path, num_classes=shards.num_classes):
            rows.append(extra_logits(sample, names, shards.num_classes, path))
    return {name: np.stack([r[j] for r in rows]) for j, name in enumerate(names)}


def estimated_bytes(shards: ShardSet) -> int:
    spec = shards.input_spec
    if spec is None or spec.shape is None:
        return 1 << 62  # unknown sizes: never in memory
    per = int(np.prod(spec.shape)) * (4 if spec.kind == "vector" else 1)
    return per * (shards.num_samples or 0)


def _batch_random(cfg: StreamConfig, aug: transforms.AugmentSpec) -> BatchRandom:
    return BatchRandom(cfg.seed, cfg.stream_id, transforms.draws(aug, cfg.views))


def _views(x: np.ndarray, cfg: StreamConfig, aug: transforms.AugmentSpec, rng: Uniforms):
    if cfg.views == "labeled":
        return (transforms.weak(x, aug, rng),)
    return transforms.weak_and_strong(x, aug, rng)


def _collate(views: list[tuple], labels: list[int] | None, extras: dict[str, list[np.ndarray]] | None = None,
             ) -> dict[str, torch.Tensor]:
    names = ("x",) if len(views[0]) == 1 else ("weak", "strong")
    out = {name: torch.from_numpy(np.stack([v[i] for v in views])) for i, name in enumerate(names)}
    if labels is not None:
        out["y"] = torch.as_tensor(labels, dtype=torch.int64)
    for name, rows in (extras or {}).items():
        out[name] = torch.from_numpy(np.stack(rows))
    return out


class InMemoryStream(torch.utils.data.IterableDataset):
    """Endless batches of this process's slice of each global batch; position = global batch index."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray | None, cfg: StreamConfig, aug: transforms.AugmentSpec,
                 extras: dict[str, np.ndarray] | None = None):
        if cfg.global_batch % cfg.world:
            raise MplError(f"the batch size {cfg.global_batch} is not divisible by the {cfg.world} processes.")
        self.inputs, self.labels, self.cfg, self.aug = inputs, labels, cfg, aug
        self.extras = extras or {}
        self.start = 0
        self.random = _batch_random(cfg, aug)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, self.cfg.stream_id, epoch]).permutation(len(self.inputs))

    def batch(self, index: int) -> dict[str, torch.Tensor]:
        cfg, n = self.cfg, len(self.inputs)
        first = index * cfg.global_batch + cfg.rank * cfg.local_batch
        positions = np.arange(first, first + cfg.local_batch)
        if self.aug.kind == "none" and self.inputs.dtype != np.uint8:
            return self._plain_batch(positions)
        views, labels, perm_epoch, perm = [], [], -1, None
        extras: dict[str, list[np.ndarray]] = {name: [] for name in self.extras}
        # Row j of global batch `index`'s block belongs to position index * G + j, whoever draws it.
        block = self.random.block((index,), cfg.local_batch, first_row=cfg.rank * cfg.local_batch)
        for p, row in zip(positions, block):
            epoch = int(p // n)
            if epoch != perm_epoch:
                perm, perm_epoch = self._permutation(epoch), epoch
            i = perm[p % n]
            views.append(_views(self.inputs[i], cfg, self.aug, Uniforms(row)))
            if self.labels is not None:
                labels.append(int(self.labels[i]))
            for name, rows in extras.items():
                rows.append(self.extras[name][i])
        return _collate(views, labels if self.labels is not None and cfg.views == "labeled" else None, extras)

    def _plain_batch(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """Vectors without augmentation (TwoMoon): the same batch as the per-sample path, gathered at once.

        Augmentation kind "none" draws no random numbers, so skipping the per-sample generators changes
        nothing but the speed (a 2,000-point full batch costs ~0.1 ms instead of ~27 ms)."""
        n = len(self.inputs)
        epochs = positions // n
        index = np.empty(len(positions), np.int64)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            index[rows] = self._permutation(int(epoch))[positions[rows] % n]
        x = self.inputs[index]
        if self.cfg.views == "labeled":
            out = {"x": torch.from_numpy(x)}
            if self.labels is not None:
                out["y"] = torch.from_numpy(self.labels[index].astype(np.int64))
        else:
            out = {"weak": torch.from_numpy(x), "strong": torch.from_numpy(x.copy())}
        for name, rows in self.extras.items():  # a large teacher's stored logits (Reduced MPL), hidden labels
            out[name] = torch.from_numpy(np.ascontiguousarray(rows[index]))
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        index = self.start + worker
        while True:
            yield self.batch(index)
            index += num_workers


class ShardStream(torch.utils.data.IterableDataset):
    """Endless local batches streamed from shards; position = batches this process consumed."""

    def __init__(self, shards: ShardSet, cfg: StreamConfig, aug: transforms.AugmentSpec):
        self.shards, self.cfg, self.aug = shards, cfg, aug
        self.start = 0
        self.random = _batch_random(cfg, aug)

    def _reader(self, slot: int, slots: int) -> SlotReader:
        cfg = self.cfg
        return SlotReader(self.shards, cfg.seed, cfg.stream_id, slot, slots, cfg.shuffle_buffer)

    def _samples(self, slot: int, slots: int, epoch: int):
        """One epoch of this slot's (shard, sample), before the shuffle buffer."""
        reader = self._reader(slot, slots)
        return reader.samples(reader.parts(epoch))

    def _raw_batches(self, slot: int, slots: int, done: int = 0):
        """Batches of undecoded (shard, sample) after the slot's seeded shuffle buffer, endlessly over epochs, from
        batch `done` on; the batches before it are skipped without reading their samples (data/slot_reader.py)."""
        batch = []
        for item in self._reader(slot, slots).items(skip=done * self.cfg.local_batch):
            batch.append(item)
            if len(batch) == self.cfg.local_batch:
                yield batch
                batch = []

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg = self.cfg
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader takes batches from workers round-robin; on resume at position P the first
        # batch must come from the role that would have produced batch P, hence the rotation.
        role = (worker + self.start) % num_workers
        done = (self.start - role + num_workers - 1) // num_workers  # batches this role produced already
        slot, slots = cfg.rank * num_workers + role, cfg.world * num_workers
        spec = self.shards.input_spec
        for k, raw in enumerate(self._raw_batches(slot, slots, done), start=done):
            views, labels = [], []
            extras: dict[str, list[np.ndarray]] = {name: [] for name in cfg.extras}
            if cfg.hidden_labels is not None:
                extras["hidden_y"] = [np.int64(cfg.hidden_labels.get(s.key, -1)) for _, s in raw]
            block = self.random.block((k, slot, slots), len(raw))
            for (path, sample), row in zip(raw, block):
                views.append(_views(_decode(sample, path, spec), cfg, self.aug, Uniforms(row)))
                labels.append(sample.label)
                for name, row in zip(cfg.extras, extra_logits(sample, cfg.extras, self.shards.num_classes, path)):
                    extras[name].append(row)
            yield _collate(views, labels if cfg.views == "labeled" else None, extras)


class Batches:
    """An endless iterator of batches that knows its position (for resume)."""

    def __init__(self, dataset, workers: int, position: int = 0, prefetch: int = 4):
        dataset.start = position
        self.position, self.workers, self.prefetch = position, workers, prefetch if workers > 0 else 0
        if workers > 0:
            socket_dir()
            self._it = iter(torch.utils.data.DataLoader(Carrying(dataset), batch_size=None, num_workers=workers,
                                                        persistent_workers=False, prefetch_factor=max(1, prefetch),
                                                        worker_init_fn=fetching.worker_init()))
        else:
            self._it = iter(dataset)

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = unwrap(next(self._it))  # a worker's MplError is raised here with its own message
        self.position += 1
        return batch

    def __iter__(self):
        return self


def make_stream(shards: ShardSet, cfg: StreamConfig, aug: transforms.AugmentSpec, in_memory: bool,
                position: int = 0, cache: dict | None = None) -> Batches:
    if in_memory:
        key = (str(shards.root), cfg.extras)
        if cache is not None and key in cache:
            inputs, labels, extras, keys = cache[key]
        else:
            inputs, labels, keys = load_in_memory(shards)
            extras = load_extras_in_memory(shards, cfg.extras) if cfg.extras else {}
            if cache is not None:
                cache[key] = (inputs, labels, extras, keys)
        if cfg.hidden_labels is not None:
            extras = {**extras, "hidden_y": np.array([cfg.hidden_labels.get(k, -1) for k in keys], np.int64)}
        if cfg.views == "labeled" and labels is None:
            raise MplError(f"{shards.root} has no labels but is used as the labelled set.")
        dataset = InMemoryStream(inputs, labels, cfg, aug, extras)
        workers = cfg.workers if aug.kind != "none" else 0  # no augmentation: workers only add overhead
    else:
        if cfg.global_batch % cfg.world:
            raise MplError(f"the batch size {cfg.global_batch} is not divisible by the {cfg.world} processes.")
        dataset, workers = ShardStream(shards, cfg, aug), cfg.workers
    return Batches(dataset, workers, position, cfg.prefetch)


def eval_batches(shards: ShardSet, aug: transforms.AugmentSpec, batch_size: int, rank: int = 0, world: int = 1,
                 ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:
    """Each sample exactly once across processes (no padding): (keys, inputs uint8/float, labels)."""
    keys, xs, ys = [], [], []
    spec = shards.input_spec
    for path, sample in _owned_samples(shards, rank, world):
        keys.append(sample.key)
        xs.append(transforms.eval_view(_decode(sample, path, spec), aug))
        ys.append(sample.label)
        if len(keys) == batch_size:
            yield _eval_batch(keys, xs, ys)
            keys, xs, ys = [], [], []
    if keys:
        yield _eval_batch(keys, xs, ys)


def _owned_samples(shards: ShardSet, rank: int, world: int):
    """(shard path, sample) for the samples at global positions p with p % world == rank, in order. With a
    manifest only those are read (through the shards' header index); a bare shard pattern is read whole.
    The next remote shard downloads while one is read."""
    first = 0
    for i in fetching.ahead(shards.shard_paths, range(len(shards.shard_paths))):
        path = shards.shard_paths[i]
        if shards.shard_counts is not None:
            start = first
            wanted = None if world == 1 else (lambda p: (start + p) % world == rank)
            for _, sample in shard_samples(path, shards.num_classes, wanted):
                yield path, sample
            first += shards.shard_counts[i]
            continue
        for sample in read_shard(path, shards.num_classes):
            if first % world == rank:
                yield path, sample
            first += 1


def _eval_batch(keys, xs, ys):
    labels = None if any(y is None for y in ys) else torch.as_tensor(ys, dtype=torch.int64)
    return keys, torch.from_numpy(np.stack(xs)), labels


def to_model_input(x: torch.Tensor, normalisation: tuple, device, channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC images -> normalised float NCHW on the device; float vectors pass through."""
    x = x.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x.float()
    return transforms.to_float_batch(x, *normalisation, channels_last=channels_last)

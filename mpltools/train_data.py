"""The data of a training run, from its recipe: the shard sets opened and checked against each other, the
augmentation and normalisation, the loaders' plan and streams, and each step's batch on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mpltools import log
from mpltools.config import Recipe
from mpltools.data import sizing, transforms
from mpltools.data.codecs import InputSpec
from mpltools.data.loaders import LABELED, UNLABELED, StreamConfig, estimated_bytes, make_stream, to_model_input
from mpltools.data.opening import open_shard_set
from mpltools.data.remote import shard_size
from mpltools.data.shards import ShardSet
from mpltools.errors import MplError, UsageError
from mpltools.methods.common import Batch


@dataclass
class DataSetup:
    labeled: ShardSet
    unlabeled: ShardSet | None
    val: ShardSet | None
    classes: list[str]
    input_spec: InputSpec
    model_input_shape: tuple[int, ...]
    augment: transforms.AugmentSpec
    normalisation: dict  # {"name", "mean", "std"}
    in_memory: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def norm_tuple(self) -> tuple:
        return (self.normalisation["mean"], self.normalisation["std"])


def data_keys(recipe: Recipe, need_unlabeled: bool) -> list[tuple[str, str, bool]]:
    """(recipe key, location, needs labels) of each shard set the run reads."""
    d = recipe.data
    keys = [("data.labeled", d.labeled, True)]
    if need_unlabeled:
        keys.append(("data.unlabeled", d.unlabeled, False))
    if d.val:
        keys.append(("data.val", d.val, True))
    return keys


def open_key(key: str, location: str, labels: bool) -> ShardSet:
    """The shard set a data key names, with its manifest (and labels where the run needs them); a failure names the
    key and its value (`data.labeled = 'x': ...`), with the failure's own exit code."""
    if not location:
        raise UsageError(f"{key} is empty: name a shard set (or pass --set {key}=PATH).")
    try:
        shards = open_shard_set(location)
        shards.require_manifest("training")
        if labels:
            shards.require_labels("training" if key == "data.labeled" else "validation")
    except MplError as exc:
        raise MplError(f"{key} = {location!r}: {exc.message}", exc.exit_code) from None
    return shards


def open_data(recipe: Recipe, need_unlabeled: bool) -> DataSetup:
    d, a = recipe.data, recipe.augment
    opened = {key: open_key(key, location, labels) for key, location, labels in data_keys(recipe, need_unlabeled)}
    labeled, unlabeled, val = (opened.get(k) for k in ("data.labeled", "data.unlabeled", "data.val"))
    for other in (unlabeled, val):
        if other is None:
            continue
        if other.classes != labeled.classes and not other.classes_unknown:
            from mpltools.data.wdscan import classes_hint

            raise MplError(
                f"{other.root} has classes {other.classes[:5]}... but {labeled.root} has {labeled.classes[:5]}...; all sets of a run must share one label set."
                + classes_hint(labeled, other)
            )
        if other.input_spec.kind != labeled.input_spec.kind or (
            other.input_spec.shape != labeled.input_spec.shape and a.kind != "imagenet"
        ):
            raise MplError(
                f"{other.root} holds inputs {other.input_spec.shape} but {labeled.root} holds {labeled.input_spec.shape}."
            )
    spec = labeled.input_spec
    if spec.kind == "vector":
        augment = transforms.AugmentSpec(kind="none", image_size=1)
        model_shape = tuple(spec.shape)
    else:
        if spec.shape is None and not a.image_size:
            raise UsageError('the images have different sizes: set augment.image_size (and augment.kind = "imagenet").')
        size = a.image_size or spec.shape[0]
        channels = spec.shape[2] if spec.shape else (spec.channels or 3)
        augment = transforms.AugmentSpec(
            kind=a.kind,
            image_size=size,
            num_layers=a.num_layers,
            magnitude=a.magnitude,
            cutout=a.cutout,
            flip=a.flip,
            translate_const=a.translate_const or None,
            cutout_const=a.cutout_const or None,
        )
        model_shape = (channels, size, size)
    mean, std = transforms.NORMALISATION[a.normalisation]
    sets = [s for s in (labeled, unlabeled, val) if s is not None]
    if d.in_memory == "auto":
        in_memory = sum(estimated_bytes(s) for s in sets) <= d.in_memory_max_mb * (1 << 20)
    else:
        in_memory = d.in_memory == "yes"
    return DataSetup(
        labeled,
        unlabeled,
        val,
        labeled.classes,
        spec,
        model_shape,
        augment,
        {"name": a.normalisation, "mean": list(mean), "std": list(std)},
        in_memory,
    )


def loader_plan(
    data: DataSetup, recipe: Recipe, world: int, need_unlabeled: bool, extras: tuple[str, ...] = ()
) -> sizing.LoaderPlan:
    """Workers, queue depth and memory of this process's training streams (data/sizing.py)."""
    d = recipe.data
    view = int(np.prod(data.model_input_shape)) * (4 if data.input_spec.kind == "vector" else 1)
    sets = (data.labeled, data.unlabeled if need_unlabeled else None)
    encoded = tuple(_encoded_bytes(s) for s in sets)
    decoded = sum(estimated_bytes(s) for s in {s.root: s for s in sets if s is not None}.values()) if data.in_memory else 0
    return sizing.plan(
        labeled_batch=d.batch_size // world,
        unlabeled_batch=d.batch_size * d.unlabeled_ratio // world,
        two_streams=need_unlabeled,
        workers=d.workers,
        unlabeled_ratio=d.unlabeled_ratio,
        view_bytes=view,
        extra_bytes=4 * data.num_classes * len(extras),
        in_memory=data.in_memory,
        augmented=data.augment.kind != "none",
        shuffle_buffer=d.shuffle_buffer,
        encoded_bytes=encoded,
        decoded_bytes=decoded,
        prefetch_mb=d.prefetch_mb,
    )


def _encoded_bytes(shards: ShardSet | None) -> int:
    if shards is None or not shards.num_samples:
        return 0
    return sum(shard_size(p) for p in shards.shard_paths) // shards.num_samples


def check_loaders(
    data: DataSetup, recipe: Recipe, runtime, need_unlabeled: bool, extras: tuple[str, ...] = ()
) -> sizing.LoaderPlan:
    """Print the loaders' plan and memory estimate; refuse a run whose loaders cannot fit on this machine.

    The limit is the machine's memory (or the container's), the same for every process, so every
    process takes the same decision before anything is written."""
    plan = loader_plan(data, recipe, runtime.world, need_unlabeled, extras)
    if runtime.is_main:
        log.info(plan.describe())
        if plan.over_prefetch_budget:
            log.warn(
                f"the queued batches exceed data.prefetch_mb = {recipe.data.prefetch_mb} even at one batch per worker; "
                "lower data.workers or the batch size to stay within it."
            )
    here = int(os.environ.get("LOCAL_WORLD_SIZE", runtime.world))
    problem = sizing.refusal(plan, here, sizing.machine_memory())
    if problem:
        raise UsageError(problem)
    return plan


def make_streams(
    data: DataSetup,
    recipe: Recipe,
    rank: int,
    world: int,
    position: int,
    need_unlabeled: bool,
    extras: tuple[str, ...] = (),
    hidden_labels: dict | None = None,
):
    d = recipe.data
    for batch, what in ((d.batch_size, "data.batch_size"), (d.batch_size * d.unlabeled_ratio, "the unlabelled batch")):
        if batch % world:
            raise UsageError(f"{what} ({batch}) must be divisible by the number of processes ({world}).")
    plan = loader_plan(data, recipe, world, need_unlabeled, extras)
    cache: dict = {}
    common = dict(seed=recipe.runtime.seed, rank=rank, world=world, shuffle_buffer=d.shuffle_buffer, extras=extras)
    lab = plan.stream("labelled")
    labeled = make_stream(
        data.labeled,
        StreamConfig("labeled", d.batch_size, stream_id=LABELED, workers=lab.workers, prefetch=lab.prefetch, **common),
        data.augment,
        data.in_memory,
        position,
        cache,
    )
    unlabeled = None
    if need_unlabeled:
        unl = plan.stream("unlabelled")
        unlabeled = make_stream(
            data.unlabeled,
            StreamConfig(
                "unlabeled",
                d.batch_size * d.unlabeled_ratio,
                stream_id=UNLABELED,
                workers=unl.workers,
                prefetch=unl.prefetch,
                hidden_labels=hidden_labels,
                **common,
            ),
            data.augment,
            data.in_memory,
            position,
            cache,
        )
    return labeled, unlabeled


def device_batch(lab: dict, unl: dict | None, data: DataSetup, device, channels_last: bool, teacher_inputs: str = "") -> Batch:
    """The streams' batches on the device; `teacher_inputs` names the extra the (reduced) teacher reads."""
    norm = data.norm_tuple()
    prep = lambda x: to_model_input(x, norm, device, channels_last)  # noqa: E731
    batch = Batch(
        labeled_x=prep(lab["x"]),
        labeled_y=lab["y"].to(device),
        unlabeled_weak=prep(unl["weak"]) if unl else None,
        unlabeled_strong=prep(unl["strong"]) if unl else None,
    )
    if unl is not None and "hidden_y" in unl:  # diagnostics only (diag/pl_accuracy), never trained on
        batch.unlabeled_y = unl["hidden_y"].to(device, non_blocking=True)
    if teacher_inputs:
        batch.teacher_labeled = lab[teacher_inputs].to(device, non_blocking=True)
        batch.teacher_unlabeled = unl[teacher_inputs].to(device, non_blocking=True)
    return batch

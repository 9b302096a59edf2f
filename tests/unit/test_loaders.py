"""Training streams: determinism, resume positions, splitting across processes and workers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from mpltools.data import transforms
from mpltools.data.codecs import InputSpec, Sample, encode_png
from mpltools.data.loaders import (
    LABELED,
    UNLABELED,
    InMemoryStream,
    ShardStream,
    StreamConfig,
    eval_batches,
    load_in_memory,
    make_stream,
)
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardWriter

AUG = transforms.AugmentSpec(kind="cifar", image_size=8, magnitude=10, flip=True)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    """60 labelled 8x8 images in 6 shards; pixel (0,0) encodes the sample index for tracing."""
    root = tmp_path_factory.mktemp("stream") / "set"
    writer = ShardWriter(
        root,
        input_spec=InputSpec("image", "png", (8, 8, 3)),
        classes=[str(c) for c in range(3)],
        labeled=True,
        provenance={},
        max_per_shard=10,
    )
    rng = np.random.default_rng(0)
    for i in range(60):
        img = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        writer.write(Sample(f"s{i:03d}", "png", encode_png(img), i % 3))
    writer.close()
    return root


def take(stream, n):
    return [next(stream) for _ in range(n)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("views", ["labeled", "unlabeled"])
def test_stream_resumes_exactly_at_a_position(shard_set, in_memory, views):
    shards = open_shard_set(shard_set)
    cfg = StreamConfig(views, 8, seed=3, stream_id=LABELED if views == "labeled" else UNLABELED, shuffle_buffer=16)
    straight = take(make_stream(shards, cfg, AUG, in_memory), 12)
    resumed = take(make_stream(shards, cfg, AUG, in_memory, position=7), 5)
    assert same(straight[7:], resumed)
    assert not same(
        straight[:5], take(make_stream(shards, StreamConfig(views, 8, seed=4, stream_id=cfg.stream_id), AUG, in_memory), 5)
    )


def test_streamed_batches_with_workers_equal_resumed_order(shard_set):
    shards = open_shard_set(shard_set)
    cfg = StreamConfig("labeled", 4, seed=1, stream_id=LABELED, workers=2, shuffle_buffer=8)
    straight = take(make_stream(shards, cfg, AUG, False), 9)
    for position in (1, 4, 5):
        assert same(straight[position:], take(make_stream(shards, cfg, AUG, False, position=position), 9 - position))


def test_in_memory_global_batch_is_the_same_for_one_and_two_processes(shard_set):
    inputs, labels, _ = load_in_memory(open_shard_set(shard_set))
    one = InMemoryStream(inputs, labels, StreamConfig("unlabeled", 8, seed=0, stream_id=UNLABELED), AUG)
    halves = [
        InMemoryStream(inputs, labels, StreamConfig("unlabeled", 8, seed=0, stream_id=UNLABELED, rank=r, world=2), AUG)
        for r in range(2)
    ]
    for index in range(10):  # crosses epoch boundaries (60 samples / 8)
        full = one.batch(index)
        parts = [h.batch(index) for h in halves]
        for key in ("weak", "strong"):
            assert torch.equal(full[key], torch.cat([p[key] for p in parts]))


def test_each_epoch_visits_every_sample_once_across_processes_and_workers(shard_set):
    shards = open_shard_set(shard_set)
    keys_seen = []
    for rank, worker in itertools.product(range(2), range(2)):
        stream = ShardStream(shards, StreamConfig("labeled", 5, seed=0, stream_id=LABELED, rank=rank, world=2), AUG)
        slot, slots = rank * 2 + worker, 4
        # One epoch of this slot's raw samples (shards split 6 -> slots of 2/2/1/1).
        keys_seen += [s.key for _, s in stream._samples(slot, slots, epoch=0)]
    assert sorted(keys_seen) == [f"s{i:03d}" for i in range(60)]


def test_fewer_shards_than_slots_splits_by_sample(shard_set):
    shards = open_shard_set(shard_set)
    stream = ShardStream(shards, StreamConfig("labeled", 5, seed=0, stream_id=LABELED, world=4), AUG)
    keys = [s.key for slot in range(8) for _, s in stream._samples(slot, 8, epoch=0)]
    assert sorted(keys) == [f"s{i:03d}" for i in range(60)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_batches_partition_the_set_exactly(shard_set, world):
    shards = open_shard_set(shard_set)
    keys = [k for rank in range(world) for keys, _, _ in eval_batches(shards, AUG, 7, rank, world) for k in keys]
    assert sorted(keys) == [f"s{i:03d}" for i in range(60)] and len(keys) == 60


def test_batch_not_divisible_by_processes_is_an_error(shard_set):
    from mpltools.errors import MplError

    with pytest.raises(MplError, match="divisible"):
        make_stream(open_shard_set(shard_set), StreamConfig("labeled", 5, seed=0, stream_id=LABELED, world=2), AUG, False)


@pytest.mark.parametrize("views", ["labeled", "unlabeled"])
def test_vector_fast_path_carries_every_extra_row_aligned_with_its_input(views):
    """Reduced MPL on vectors (TwoMoon): the stored teacher logits must travel with the batch (a KeyError
    'teacher_logits.npy' in training.device_batch before; the fast path kept only hidden labels)."""
    n = 20
    inputs = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.int64)
    extras = {"teacher_logits.npy": np.stack([np.arange(n) * k for k in (1, 2, 3)], axis=1).astype(np.float32)}
    aug = transforms.AugmentSpec(kind="none", image_size=2)
    stream = InMemoryStream(inputs, labels, StreamConfig(views, 6, seed=0, stream_id=LABELED), aug, extras)
    for index in range(5):  # crosses an epoch boundary
        batch = stream.batch(index)
        x = batch["x" if views == "labeled" else "weak"]
        rows = batch["teacher_logits.npy"]
        assert rows.shape == (6, 3) and rows.dtype == torch.float32
        assert torch.equal(rows[:, 0], x[:, 0]) and torch.equal(rows[:, 2], 3 * x[:, 0])

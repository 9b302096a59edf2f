"""A streaming slot's samples: the same order as a plain read-everything shuffle, and a resume that reads only
the shards its shuffle buffer held and the shard in progress."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from mpltools.data import slot_reader
from mpltools.data.codecs import InputSpec, Sample
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardError, ShardWriter, read_shard
from mpltools.data.slot_reader import Placeholder, SlotReader, layout, shuffled


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    """60 vectors in shards of 7 (the last holds 4): 9 shards of unequal size."""
    root = tmp_path_factory.mktemp("slots") / "set"
    writer = ShardWriter(
        root, input_spec=InputSpec("vector", "npy", (2,)), classes=["a", "b"], labeled=True, provenance={}, max_per_shard=7
    )
    for i in range(60):
        writer.write(Sample(f"s{i:03d}", "npy", np.asarray([i, 0], np.float32).tobytes(), i % 2))
    writer.close()
    return root


def _reference(shards, seed: int, stream: int, slot: int, slots: int, size: int, epochs: int) -> list[list[str]]:
    """What a slot reads, read the plain way: every sample of its shards (or every slots-th sample of all of them),
    through the shuffle buffer, epoch after epoch."""
    keys = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, stream, epoch]).permutation(len(shards.shard_paths))
        samples, counter = [], 0
        for i in order if len(order) < slots else order[slot::slots]:
            for sample in read_shard(shards.shard_paths[i]):
                if len(order) >= slots or counter % slots == slot:
                    samples.append(sample.key)
                counter += 1
        rng = np.random.default_rng([seed, stream, slot, slots, epoch])
        keys.append(list(shuffled(iter(samples), rng, size, [])))
    return keys


def _keys(items, n: int) -> list[str]:
    return [sample.key for _, sample in itertools.islice(items, n)]


@pytest.mark.parametrize(("slot", "slots"), [(0, 1), (1, 2), (3, 4), (5, 12)])  # 12 slots > 9 shards: split by sample
@pytest.mark.parametrize("size", [1, 5, 100])
def test_resumed_items_are_the_uninterrupted_ones(shard_set, slot, slots, size):
    shards = open_shard_set(shard_set)
    reader = SlotReader(shards, 3, 1, slot, slots, size)
    reference = _reference(shards, 3, 1, slot, slots, size, epochs=3)
    n, per_epoch = sum(map(len, reference)), len(reference[0])
    straight = _keys(reader.items(), n)
    assert straight == [key for epoch in reference for key in epoch]
    for skip in sorted({1, size, size + 1, per_epoch - 1, per_epoch, per_epoch + 3, 2 * per_epoch + size} & set(range(1, n))):
        assert _keys(reader.items(skip), n - skip) == straight[skip:], skip


@pytest.mark.parametrize("size", [1, 5, 16])
def test_a_resume_reads_only_the_shards_the_buffer_held_and_the_one_in_progress(shard_set, monkeypatch, size):
    shards = open_shard_set(shard_set)
    reader = SlotReader(shards, 0, 1, 0, 1, size)
    read: list[Path] = []

    def counting(path, num_classes=None):
        read.append(path)
        return read_shard(path, num_classes)

    monkeypatch.setattr(slot_reader, "read_shard", counting)
    parts = reader.parts(0)
    places = [Placeholder(p.shard, k) for p in parts for k in range(p.count)]
    for skip in (10, 23, 38, 50):
        # Replay by place: after `skip` items left the buffer, `consumed` went in and `buffer` holds what a resume reads.
        buffer: list = []
        fed = iter(places)
        out = shuffled(fed, np.random.default_rng([0, 1, 0, 1, 0]), size, buffer)
        for _ in range(skip):
            next(out)
        consumed = len(places) - sum(1 for _ in fed)
        going_on = {places[consumed].shard} if consumed < len(places) else set()  # in progress, or the next one
        expected = {shards.shard_paths[i] for i in {item.shard for item in buffer} | going_on}
        read.clear()
        first = next(reader.items(skip))
        assert set(read) == expected and len(read) == len(expected), (skip, read, expected)  # each read once
        assert len(expected) <= len({p.shard for p in places[: consumed + 1]})  # a replay by reading reads all those
        assert size > 1 or len(expected) <= 2  # a buffer of one holds the last sample read
        assert first[1].key == _keys(reader.items(), skip + 1)[-1]


def test_a_shard_with_another_count_than_the_manifest_is_an_error(shard_set, tmp_path):
    import json
    import shutil

    copy = tmp_path / "set"
    shutil.copytree(shard_set, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["count"] += 1
    manifest["num_samples"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    try:
        shards = open_shard_set(copy)
    except ShardError:
        pytest.skip("the manifest is checked when the set is opened")
    with pytest.raises(ShardError, match="holds 7 samples but .* lists 8"):
        _keys(SlotReader(shards, 0, 1, 0, 1, 4).items(), 60)


def test_layout_splits_every_epoch_exactly_between_slots():
    counts = [7, 0, 3, 9, 1]
    order = np.array([3, 0, 4, 2, 1])
    for slots in (1, 2, 5, 6, 8):
        taken = sorted(
            (p.shard, p.position(k)) for slot in range(slots) for p in layout(order, counts, slot, slots) for k in range(p.count)
        )
        assert taken == [(i, n) for i, c in enumerate(counts) for n in range(c)], slots

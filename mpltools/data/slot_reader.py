"""The undecoded samples one streaming data slot reads, through its seeded shuffle buffer, from any position.

A slot is one DataLoader worker of one process (`ShardStream` in data/loaders.py). In epoch e it reads
the shards of a seeded permutation that fall to it, or, when the set has fewer shards than there are
slots, every slots-th sample of all of them. `layout` says which samples from the manifest's per-shard
counts alone. They pass through a shuffle buffer driven by a generator seeded with (seed, stream, slot,
slots, epoch); what leaves the buffer, epoch after epoch, is the slot's sample stream, which the caller
cuts into batches.

Resuming at item N of that stream reads nothing that came before it. The buffer's random draws depend
only on how many items it holds, never on what they are, so whole epochs are skipped by their counts and
the epoch in progress is replayed with placeholders (shard, position) in place of samples. Then the
shards whose samples the buffer still holds are read once to put the samples in, and reading goes on
from the position reached in the shard in progress. For a remote set (data/fetching.py) that is all that
is downloaded again: the shards the buffer held and the shard in progress, not the epoch so far. The
batches are the same as those of the uninterrupted stream, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np

from mpltools.data import fetching
from mpltools.data.shards import ShardError, ShardSet, read_shard


@dataclass(frozen=True)
class Part:
    """The samples a slot takes from one shard: `count` positions, `first`, `first + step`, ..."""

    shard: int
    first: int
    step: int
    count: int

    def position(self, k: int) -> int:
        return self.first + k * self.step


class Placeholder(NamedTuple):
    """A sample replayed by its place only, until the buffer's samples are read in."""

    shard: int
    position: int


def layout(order: np.ndarray, counts: list[int], slot: int, slots: int) -> list[Part]:
    """What slot `slot` of `slots` reads, in order, when the shards are read in `order`."""
    if len(counts) >= slots:
        return [Part(int(i), 0, 1, counts[i]) for i in order[slot::slots]]
    parts, seen = [], 0
    for i in order:  # fewer shards than slots: every slot keeps the samples whose running number is its own
        i = int(i)
        first = (slot - seen) % slots
        if first < counts[i]:
            parts.append(Part(i, first, slots, (counts[i] - first + slots - 1) // slots))
        seen += counts[i]
    return parts


def shuffled(items, rng: np.random.Generator, size: int, buffer: list) -> Iterator:
    """`items` through a shuffle buffer of `size` (the caller's list, so that a resume can fill it in)."""
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(len(buffer)))
        buffer[j], item = item, buffer[j]
        yield item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


class _Source:
    """The items fed to the buffer: `items` may be replaced between two of them (placeholders, then samples)."""

    def __init__(self, items: Iterator):
        self.items, self.consumed = items, 0

    def __iter__(self) -> _Source:
        return self

    def __next__(self):
        item = next(self.items)
        self.consumed += 1
        return item


class SlotReader:
    """The (shard, sample) stream of slot `slot` of `slots` over `shards`, after the shuffle buffer."""

    def __init__(self, shards: ShardSet, seed: int, stream_id: int, slot: int, slots: int, buffer_size: int):
        if shards.shard_counts is None:
            raise ShardError(f"{shards.root}: streaming needs the number of samples in each shard (a manifest).")
        self.shards, self.seed, self.stream_id = shards, seed, stream_id
        self.slot, self.slots, self.size = slot, slots, buffer_size

    def parts(self, epoch: int) -> list[Part]:
        order = np.random.default_rng([self.seed, self.stream_id, epoch]).permutation(len(self.shards.shard_paths))
        return layout(order, self.shards.shard_counts, self.slot, self.slots)

    def items(self, skip: int = 0) -> Iterator[tuple]:
        """The slot's samples as they leave the buffer, endlessly over epochs, from the `skip`-th on."""
        epoch = 0
        while True:
            parts = self.parts(epoch)
            total = sum(p.count for p in parts)
            if total == 0:
                raise ShardError(f"{self.shards.root}: no samples for data slot {self.slot} of {self.slots}; use fewer "
                                 "workers or processes.")
            rng = np.random.default_rng([self.seed, self.stream_id, self.slot, self.slots, epoch])
            if skip >= total:  # an epoch wholly before the resume position: nothing to read or draw
                skip -= total
            elif skip:
                yield from self._resumed(parts, rng, skip)
                skip = 0
            else:
                yield from shuffled(self.samples(parts), rng, self.size, [])
            epoch += 1

    def samples(self, parts: list[Part], offset: int = 0, fill: tuple[dict, list] | None = None, take: bool = True):
        """(shard, sample) of `parts` from the `offset`-th sample of the first one on, reading shard by shard while the
        next one downloads. `fill` = (wanted, buffer): a sample at a (shard, position) in `wanted` is put in its
        place in `buffer` as it passes. With `take` false nothing is yielded (only `fill` is served)."""
        refs, counts = self.shards.shard_paths, self.shards.shard_counts
        wanted, buffer = fill if fill is not None else ({}, [])
        by_shard = {p.shard: p for p in parts}
        start = {parts[0].shard: parts[0].position(offset)} if parts else {}
        for i in fetching.ahead(refs, [p.shard for p in parts]):
            part, first = by_shard[i], start.get(i, 0)
            end = part.position(part.count)
            read = 0
            for position, sample in enumerate(read_shard(refs[i], self.shards.num_classes)):
                read += 1
                j = wanted.pop((i, position), None)
                if j is not None:
                    buffer[j] = (refs[i], sample)
                if take and first <= position < end and (position - part.first) % part.step == 0:
                    yield refs[i], sample
            if read != counts[i]:
                raise ShardError(f"{refs[i]}: holds {read} samples but {self.shards.origin or 'the manifest'} lists "
                                 f"{counts[i]}; the shard set changed: re-create it.")

    def _resumed(self, parts: list[Part], rng: np.random.Generator, skip: int) -> Iterator[tuple]:
        """The rest of an epoch after its first `skip` items, without reading the samples those were."""
        source = _Source(Placeholder(p.shard, p.position(k)) for p in parts for k in range(p.count))
        buffer: list = []
        out = shuffled(source, rng, self.size, buffer)
        for _ in range(skip):  # the same draws as the uninterrupted epoch; these items were in earlier batches
            next(out)
        k, offset = _locate(parts, source.consumed)
        wanted = {(item.shard, item.position): j for j, item in enumerate(buffer) if isinstance(item, Placeholder)}
        current = parts[k].shard if offset else None  # its held samples are filled in as it is read again below
        holding = {shard for shard, _ in wanted} - {current}
        held = [p for p in parts[:k] if p.shard in holding]
        for _ in self.samples(held, fill=(wanted, buffer), take=False):
            pass
        source.items = self.samples(parts[k:], offset, fill=(wanted, buffer))
        yield from out


def _locate(parts: list[Part], consumed: int) -> tuple[int, int]:
    """(index of the part, samples of it already consumed) after `consumed` samples of `parts`."""
    for k, part in enumerate(parts):
        if consumed < part.count:
            return k, consumed
        consumed -= part.count
    return len(parts), 0

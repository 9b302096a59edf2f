"""Augmentation randomness for training streams: reproducible, resumable and cheap per sample.

Every view draws a fixed number of uniforms per image (`transforms.draws`), so a batch's randomness
is one block of uniforms, one row per sample. `BatchRandom` keeps one counter-based generator
(numpy's Philox, keyed by the run seed and the stream) for the life of a stream or a DataLoader
worker, and for each batch sets its 256-bit counter to the batch's identity (e.g. the global batch
index, or (batch of this worker, data slot, number of slots)) and draws the block in one call. A
sample's draws are therefore a pure function of (seed, stream, batch identity, row): the same after a
resume and whatever batches were drawn before. Philox's outputs for different counters are
independent streams by construction, and a block uses at most rows x draws / 4 counter steps of
the lowest word, which the identity never touches.

`Uniforms` hands a row to the transforms, which call only `random(n)` / `random()` on their
generator argument. Cost (benchmarks/step.py): well under a microsecond per sample, against about
10-30 us for the `numpy.random.default_rng([seed, stream, ...])` per sample this replaced.
"""

from __future__ import annotations

import numpy as np

_ID_WORDS = 3  # counter words 1..3 hold the batch identity; word 0 counts the draws within the block


class BatchRandom:
    """One generator per stream (or worker): `block(ids, rows)` -> `rows` x `per_sample` uniforms."""

    def __init__(self, seed: int, stream_id: int, per_sample: int):
        self.per_sample = int(per_sample)
        key = np.random.SeedSequence([int(seed), int(stream_id)]).generate_state(2, np.uint64)
        self._bits = np.random.Philox(key=key)
        self._gen = np.random.Generator(self._bits)
        self._counter = np.zeros(4, np.uint64)
        self._state = {"bit_generator": "Philox", "state": {"counter": self._counter, "key": key},
                       "buffer": np.zeros(4, np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0}

    def block(self, ids: tuple[int, ...], rows: int, first_row: int = 0) -> np.ndarray:
        """Rows `first_row .. first_row + rows - 1` of the uniforms of batch `ids` (up to three
        non-negative integers): shape (rows, per_sample), the same whatever `first_row` is, so each
        process of a run draws only its own rows of a global batch."""
        if not 0 < len(ids) <= _ID_WORDS or min(ids) < 0:
            raise ValueError(f"a batch identity is 1 to {_ID_WORDS} non-negative integers, got {ids!r}")
        self._counter[:] = 0
        self._counter[1:1 + len(ids)] = ids
        self._bits.state = self._state  # buffer_pos 4: nothing left over from the previous block
        skip = first_row * self.per_sample
        if skip:  # a counter step is four draws
            self._bits.advance(skip // 4)
            self._gen.random(skip % 4)
        block = self._gen.random((rows, self.per_sample))
        block.flags.writeable = False
        return block


class Uniforms:
    """The part of `numpy.random.Generator` the transforms use, served from one sample's row."""

    __slots__ = ("_row", "_pos")

    def __init__(self, row: np.ndarray):
        self._row, self._pos = row, 0

    def random(self, size: int | None = None):
        n = 1 if size is None else int(size)
        start, self._pos = self._pos, self._pos + n
        if self._pos > len(self._row):
            raise RuntimeError(f"an augmentation drew more than the {len(self._row)} uniforms planned for it "
                               "(transforms.draws is out of date)")
        return float(self._row[start]) if size is None else self._row[start:self._pos]

    @property
    def used(self) -> int:
        return self._pos

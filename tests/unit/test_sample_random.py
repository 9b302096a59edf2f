"""Per-batch blocks of augmentation uniforms (data/sample_random.py): a pure function of the batch's
identity, the same rows whoever draws them, and exactly what the views consume."""

from __future__ import annotations

import numpy as np
import pytest

from mpltools.data import transforms
from mpltools.data.sample_random import BatchRandom, Uniforms


@pytest.mark.parametrize("per_sample", [1, 3, 17, 53])
def test_any_slice_of_rows_equals_the_same_rows_of_the_whole_block(per_sample):
    rng = BatchRandom(seed=3, stream_id=1, per_sample=per_sample)
    whole = rng.block((9, 2, 4), 24)
    assert whole.shape == (24, per_sample) and not whole.flags.writeable
    for first in range(0, 21):  # first * per_sample covers every remainder mod 4 (a counter step is 4 draws)
        np.testing.assert_array_equal(rng.block((9, 2, 4), 3, first_row=first), whole[first : first + 3])


def test_a_block_depends_only_on_seed_stream_and_identity():
    a, b = BatchRandom(0, 1, 5), BatchRandom(0, 1, 5)
    first = a.block((7,), 4)
    b.block((1, 2, 3), 100)  # whatever was drawn before
    np.testing.assert_array_equal(b.block((7,), 4), first)
    others = [
        a.block((8,), 4),
        a.block((7, 1), 4),
        a.block((0, 7), 4),
        BatchRandom(1, 1, 5).block((7,), 4),
        BatchRandom(0, 0, 5).block((7,), 4),
    ]
    for other in others:
        assert not np.isin(other, first).any()
    assert len(np.unique(first)) == first.size  # rows (samples) differ from each other
    with pytest.raises(ValueError, match="non-negative"):
        a.block((-1,), 2)


def test_uniforms_serve_the_row_in_order_and_refuse_to_overdraw():
    row = np.arange(6) / 10
    u = Uniforms(row)
    np.testing.assert_array_equal(u.random(2), row[:2])
    assert u.random() == row[2]
    np.testing.assert_array_equal(u.random(3), row[3:])
    with pytest.raises(RuntimeError, match="more than the 6 uniforms"):
        u.random(1)


@pytest.mark.parametrize("kind", ["cifar", "imagenet", "none"])
def test_draws_is_exactly_what_the_views_consume(kind):
    rng = np.random.default_rng(0)
    spec = transforms.AugmentSpec(kind=kind, image_size=16, num_layers=3, magnitude=12)
    for views, fn in (("labeled", transforms.weak), ("unlabeled", transforms.weak_and_strong)):
        n = transforms.draws(spec, views)
        for seed in range(15):
            u = Uniforms(np.random.default_rng(seed).random(n))
            fn(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), spec, u)
            assert u.used == n, (views, seed)

"""The fast paths of `mpl data split` change no byte: the vectorised shard index equals the
sequential one (or steps aside), and the block-wise threaded copy writes the same shards."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import mpltools.data.fastindex as fastindex
from mpltools.commands import data_split
from mpltools.data.codecs import InputSpec, Sample, encode_npy, encode_png
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardWriter, index_shard


def _sequential(path, num_classes):
    real = fastindex.index_plain
    fastindex.index_plain = lambda *a: None
    try:
        return index_shard(path, num_classes)
    finally:
        fastindex.index_plain = real


def _write(folder: Path, samples: list[Sample], labeled: bool, classes: int) -> Path:
    writer = ShardWriter(
        folder,
        input_spec=InputSpec("image", "png", None),
        classes=[str(c) for c in range(classes)],
        labeled=labeled,
        provenance={},
        max_per_shard=10_000,
        extras=("logits.npy",),
    )
    for s in samples:
        writer.write(s)
    writer.close()
    return folder / "shard-000000.tar"


def _samples(n: int, classes: int, big: bool = False, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        side = 64 if big and i % 3 == 0 else int(rng.integers(2, 9))
        extras = {"logits.npy": encode_npy(rng.normal(size=4).astype(np.float32))} if i % 2 else {}
        key = f"k{i}-" + "x" * (i % 80)  # names up to 99 characters
        data = encode_png(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) if i % 5 else encode_npy(rng.normal(size=3))
        out.append(Sample(key, "png" if i % 5 else "npy", data, int(rng.integers(0, classes)), extras))
    return out


@pytest.mark.parametrize("labeled,classes,big", [(True, 3, False), (True, 1234, False), (False, 5, True), (True, 7, True)])
@pytest.mark.parametrize("scan", [True, False])
def test_fast_index_equals_the_sequential_index(tmp_path, monkeypatch, labeled, classes, big, scan):
    monkeypatch.setattr(fastindex, "_SCAN_BELOW", 1 << 30 if scan else 0)
    path = _write(tmp_path / "s", _samples(150, classes, big), labeled, classes)
    fast, slow = fastindex.index_plain(path, classes), _sequential(path, classes)
    assert fast is not None
    assert fast[0] == slow.keys and np.array_equal(fast[1], slow.labels) and np.array_equal(fast[2], slow.bounds)


def test_a_payload_that_looks_like_a_header_sends_the_scan_to_the_walk(tmp_path, monkeypatch):
    fake = bytearray(2048)
    fake[512 + 257 : 512 + 263] = b"ustar\x00"  # a block of this payload carries the magic where headers do
    samples = [Sample("a", "npy", bytes(fake), 0), Sample("b", "png", b"png-bytes", 1)]
    path = _write(tmp_path / "s", samples, True, 2)
    walked = []
    real_walk = fastindex._walk
    monkeypatch.setattr(fastindex, "_walk", lambda *a: walked.append(1) or real_walk(*a))
    fast, slow = fastindex.index_plain(path, 2), _sequential(path, 2)
    assert walked and fast[0] == slow.keys == ["a", "b"] and np.array_equal(fast[2], slow.bounds)


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.tar"))}


def test_split_writes_the_same_shards_whatever_the_read_block_and_index_path(tmp_path, monkeypatch):
    src = tmp_path / "src"
    writer = ShardWriter(
        src, input_spec=InputSpec("image", "png", (4, 4, 3)), classes=list("abc"), labeled=True, provenance={}, max_per_shard=40
    )
    rng = np.random.default_rng(0)
    for i in range(100):
        writer.write(Sample(f"s{i}", "png", encode_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)), i % 3))
    writer.close()
    sizes = data_split.SplitSizes(labeled_per_class=5, val_per_class=3)

    def split(out: str) -> dict[str, str]:
        data_split.run(str(src), tmp_path / out, sizes, seed=1, preset=None, max_per_shard=30, force=False, command="t")
        return _tree(tmp_path / out)

    reference = split("default")
    monkeypatch.setattr(data_split, "_READ_BLOCK", 700)  # samples straddle blocks; the hasher lags behind
    assert split("small-blocks") == reference
    monkeypatch.setattr(fastindex, "index_plain", lambda *a: None)
    assert split("sequential-index") == reference
    assert sum(open_shard_set(tmp_path / "default" / part).num_samples for part in ("labeled", "val", "unlabeled")) == 100


def test_chunks_read_ahead_in_a_thread_are_the_same_chunks_and_errors(tmp_path):
    import threading

    from mpltools.data import transforms
    from mpltools.data.chunks import _ahead, _Chunks, eval_chunks
    from mpltools.data.shards import ShardError

    src = tmp_path / "src"
    writer = ShardWriter(
        src, input_spec=InputSpec("image", "png", (4, 4, 3)), classes=list("ab"), labeled=True, provenance={}, max_per_shard=7
    )
    rng = np.random.default_rng(0)
    for i in range(30):
        writer.write(Sample(f"s{i}", "png", encode_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)), i % 2))
    writer.close()
    shards, aug = open_shard_set(src), transforms.AugmentSpec(kind="cifar", image_size=4)
    direct = list(_Chunks(shards, aug, 3, 0, 1, list(range(len(shards.shard_paths))), None))
    ahead = list(eval_chunks(shards, aug, 3))
    assert [(c.shard, c.positions.tolist(), c.keys) for c in ahead] == [(c.shard, c.positions.tolist(), c.keys) for c in direct]
    assert all(a.x.equal(b.x) for a, b in zip(ahead, direct))

    def failing():
        yield direct[0]
        raise ShardError("bad shard")

    with pytest.raises(ShardError, match="bad shard"):
        list(_ahead(failing()))
    stream = _ahead(iter(direct))
    next(stream)
    stream.close()  # the consumer stops early: the thread ends
    assert not any(t.name == "mpl-eval-chunks" and t.is_alive() for t in threading.enumerate())

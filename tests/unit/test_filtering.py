"""`mpl data filter-unlabeled`'s numpy pieces: the bounded top-K selection (exact, order-independent,
memory bounded by K x classes), the near-duplicate index, fingerprints, balancing, fixed chunks."""

import io

import numpy as np
from PIL import Image

from mpltools.data.chunks import eval_chunks
from mpltools.data.codecs import InputSpec, Sample, decode_input, encode_png
from mpltools.data.filtering import NearDuplicateIndex, TopKPerClass, balance_occurrences, dhash, pixel_digest
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardWriter
from mpltools.data.transforms import AugmentSpec


def _candidates(n, classes, seed=0, levels=50):
    rng = np.random.default_rng(seed)
    index = rng.permutation(n).astype(np.int64) * 3 + 1  # unique, unordered
    cls = rng.integers(0, classes, n)
    score = (rng.integers(0, levels, n) / levels).astype(np.float32)  # few levels: many ties
    return index, cls, score


def _brute_force(index, cls, score, k):
    keep = []
    for c in np.unique(cls):
        rows = np.flatnonzero(cls == c)
        order = sorted(rows, key=lambda r: (-score[r], index[r]))
        keep += order[:k]
    return np.sort(index[keep])


def _feed(sel, index, cls, score, rng):
    start = 0
    while start < len(index):
        step = int(rng.integers(1, 300))
        sel.add(index[start : start + step], cls[start : start + step], score[start : start + step])
        start += step


def test_top_k_per_class_is_exact_with_ties_broken_by_index():
    index, cls, score = _candidates(20_000, 6)
    sel = TopKPerClass(6, k=25, slack=50)
    _feed(sel, index, cls, score, np.random.default_rng(1))
    got = sel.arrays()
    assert np.array_equal(got["index"], _brute_force(index, cls, score, 25))
    assert np.bincount(got["cls"], minlength=6).tolist() == [25] * 6
    assert np.all(np.diff(got["index"]) > 0)


def test_selection_memory_is_bounded_by_k_times_classes_not_by_candidates():
    peaks = []
    for n in (2_000, 200_000):
        index, cls, score = _candidates(n, 10, seed=n)
        sel = TopKPerClass(10, k=30, slack=100)
        rng = np.random.default_rng(0)
        start = 0
        while start < n:
            step = int(rng.integers(1, 500))
            sel.add(index[start : start + step], cls[start : start + step], score[start : start + step])
            assert sel.size <= sel.capacity == 30 * 10 + 100  # never more than K x classes + slack records
            start += step
        assert len(sel._a["index"]) <= sel.capacity  # nor allocated
        result = sel.arrays()
        assert np.bincount(result["cls"], minlength=10).max() <= 30
        peaks.append(sel.peak)
    assert max(peaks) <= 30 * 10 + 100  # 100x more candidates, the same bound


def test_merging_partial_selections_equals_one_selection():
    index, cls, score = _candidates(5_000, 4, seed=3)
    one = TopKPerClass(4, k=40, topn=2)
    top = np.stack([score, score / 2], 1)
    one.add(index, cls, score, top, np.stack([cls, cls], 1))
    rng = np.random.default_rng(2)
    part = rng.integers(0, 3, len(index))
    merged = TopKPerClass(4, k=40, topn=2)
    for p in range(3):
        m = part == p
        sub = TopKPerClass(4, k=40, topn=2, slack=7)
        sub.add(index[m], cls[m], score[m], top[m], np.stack([cls, cls], 1)[m])
        merged.merge(sub.arrays())
    a, b = one.arrays(), merged.arrays()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert np.array_equal(a["top_p"][:, 0], a["score"])  # the top-n rows travel with their candidate


def test_without_k_everything_is_kept():
    index, cls, score = _candidates(3_000, 5)
    sel = TopKPerClass(5, k=None)
    sel.add(index, cls, score)
    assert np.array_equal(sel.arrays()["index"], np.sort(index))


def test_near_duplicate_index_matches_brute_force():
    rng = np.random.default_rng(0)
    refs = rng.integers(0, 2**63, 3_000, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 3_000, dtype=np.uint64)
    queries = list(rng.integers(0, 2**63, 300, dtype=np.uint64))
    for i in range(100):  # plant queries 0..10 bits away from a reference
        flips = rng.choice(64, size=i % 11, replace=False)
        q = int(refs[i * 7])
        for f in flips:
            q ^= 1 << int(f)
        queries.append(np.uint64(q))
    for d in (0, 4, 10):
        index = NearDuplicateIndex(refs, d)
        for q in queries:
            dist = np.bitwise_count(refs ^ np.uint64(q))
            expected = int(np.flatnonzero(dist <= d)[0]) if (dist <= d).any() else -1
            assert index.match(int(q)) == expected


def _png(array, level):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def test_pixel_digest_ignores_the_encoding_and_dhash_tolerates_small_changes():
    rng = np.random.default_rng(0)
    img = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    a, b = _png(img, 1), _png(img, 9)
    assert a != b
    da, db = (decode_input(Sample("k", "png", x)) for x in (a, b))
    assert pixel_digest(da) == pixel_digest(db)
    changed = img.copy()
    changed[0, 0, 0] ^= 1
    assert pixel_digest(changed) != pixel_digest(img)
    brighter = np.clip(img.astype(int) + 3 + rng.integers(0, 3, img.shape), 0, 255).astype(np.uint8)
    assert np.bitwise_count(np.uint64(dhash(img) ^ dhash(brighter))) <= 4
    other = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    assert np.bitwise_count(np.uint64(dhash(img) ^ dhash(other))) > 10


def test_balance_gives_exactly_k_per_class_and_is_seeded():
    cls = np.array([0] * 3 + [1] * 10 + [2] * 7 + [3] * 1)
    occ = balance_occurrences(cls, 10, seed=0)
    assert np.bincount(cls, weights=occ).tolist() == [10, 10, 10, 10]
    assert sorted(occ[cls == 0].tolist()) == [3, 3, 4] and occ[cls == 1].tolist() == [1] * 10
    assert sorted(occ[cls == 2].tolist()) == [1, 1, 1, 1, 2, 2, 2] and occ[cls == 3].tolist() == [10]
    assert np.array_equal(occ, balance_occurrences(cls, 10, seed=0))
    assert any(not np.array_equal(occ, balance_occurrences(cls, 10, seed=s)) for s in range(1, 6))


def test_eval_chunks_have_the_same_composition_for_any_number_of_processes(tmp_path):
    writer = ShardWriter(
        tmp_path / "s",
        input_spec=InputSpec("image", "png", (4, 4, 1)),
        classes=["a", "b"],
        labeled=True,
        provenance={},
        max_per_shard=13,
    )
    for i in range(40):
        writer.write(Sample(f"k{i}", "png", encode_png(np.full((4, 4, 1), i, np.uint8)), i % 2))
    writer.close()
    shards = open_shard_set(tmp_path / "s")  # 4 shards: 13, 13, 13, 1 samples
    aug = AugmentSpec(kind="none", image_size=4)
    reject = lambda sample, x: "dup" if sample.key in ("k7", "k30") else None  # noqa: E731

    def chunks(world, workers=0):
        out = [c for r in range(world) for c in eval_chunks(shards, aug, 5, r, world, inspect=reject, workers=workers)]
        for c in out:  # the rows are where they say they are
            assert [f"k{13 * c.shard + p}" for p in c.positions] == c.keys
            assert c.x is None or [int(v) for v in c.x[:, 0, 0, 0]] == [int(k[1:]) for k in c.keys]
        return sorted((c.shard, tuple(c.keys), tuple(c.rejected)) for c in out)

    one = chunks(1)
    # by shard (2, 3 processes), by chunk (5 processes: more processes than shards), and with workers
    assert one == chunks(2) == chunks(3) == chunks(5) == chunks(1, workers=2) == chunks(3, workers=2)
    keys = [k for c in one for k in c[1]]
    assert len(keys) == len(set(keys)) == 38 and not {"k7", "k30"} & set(keys)
    assert sorted(r for c in one for r in c[2]) == ["dup", "dup"]
    assert all(len(c[1]) <= 5 for c in one)


def test_shard_samples_reads_what_read_shard_reads_and_only_the_wanted_samples(tmp_path):
    import tarfile

    from mpltools.data.chunks import shard_samples
    from mpltools.data.shards import read_shard

    writer = ShardWriter(
        tmp_path / "s",
        input_spec=InputSpec("image", "png", (4, 4, 1)),
        classes=["a", "b"],
        labeled=True,
        provenance={},
        extras=("topk.npy", "note.txt"),
    )
    for i in range(9):
        writer.write(
            Sample(
                f"k{i}",
                "png",
                encode_png(np.full((4, 4, 1), i, np.uint8)),
                i % 2,
                {"topk.npy": bytes([i]) * (700 + i), "note.txt": b"x" * i},
            )
        )
    writer.close()
    path = open_shard_set(tmp_path / "s").shard_paths[0]
    # A pax shard (a 120-character key): not plain ustar, so the tarfile path reads it.
    pax = tmp_path / "pax.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, key in enumerate(["a" * 120, "short"]):
            for ext, payload in (("png", encode_png(np.full((4, 4, 1), i, np.uint8))), ("cls", b"1")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    for p in (path, pax):
        expected = list(read_shard(p, 2))
        got = [s for _, s in shard_samples(p, 2)]
        assert [(s.key, s.ext, s.data, s.label, s.extras) for s in got] == [
            (s.key, s.ext, s.data, s.label, s.extras) for s in expected
        ]
        some = list(shard_samples(p, 2, lambda pos: pos % 2 == 1))
        assert [pos for pos, _ in some] == list(range(1, len(expected), 2))
        assert [s.key for _, s in some] == [expected[pos].key for pos, _ in some]

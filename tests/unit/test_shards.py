"""The shard-set format (mpltools.data.format, .shards, .tarindex): writing, reading, indexing and its strict checks."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mpltools.data.codecs import InputSpec, Sample, decode_input, encode_npy, encode_png
from mpltools.data.opening import open_shard_set
from mpltools.data.shards import ShardError, ShardWriter, index_shard, read_keys_and_labels, read_shard, validate_key

SPEC = InputSpec("image", "png", (4, 4, 3))


def _samples(n: int, num_classes: int = 3, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        extras = {"logits.npy": encode_npy(rng.normal(size=3).astype(np.float32))} if i % 2 else {}
        out.append(
            Sample(
                f"s-{i:04d}",
                "png",
                encode_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)),
                int(rng.integers(0, num_classes)),
                extras,
            )
        )
    return out


def _write_set(
    folder: Path, samples: list[Sample], labeled: bool = True, max_per_shard: int = 4, classes=("a", "b", "c")
) -> dict:
    writer = ShardWriter(
        folder,
        input_spec=SPEC,
        classes=list(classes),
        labeled=labeled,
        provenance={"test": True},
        max_per_shard=max_per_shard,
        extras=("logits.npy",),
    )
    for s in samples:
        writer.write(s)
    return writer.close()


def _tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """What Python's tarfile writes for these members with our fixed metadata (the reference format)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_writer_writes_exactly_what_tarfile_writes_and_checksums_it(tmp_path):
    samples = _samples(10)
    manifest = _write_set(tmp_path / "set", samples)
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 2]
    for k, shard in enumerate(manifest["shards"]):
        members = []
        for s in samples[4 * k : 4 * k + 4]:
            members += [(f"{s.key}.png", s.data), (f"{s.key}.cls", str(s.label).encode())]
            members += [(f"{s.key}.{ext}", data) for ext, data in sorted(s.extras.items())]
        data = (tmp_path / "set" / shard["name"]).read_bytes()
        assert data == _tarfile_bytes(members)
        assert shard["sha256"] == hashlib.sha256(data).hexdigest() and shard["bytes"] == len(data)
    on_disk = json.loads((tmp_path / "set/manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["num_samples"] == 10 and manifest["labeled"] is True
    assert manifest["class_counts"] == np.bincount([s.label for s in samples], minlength=3).tolist()


def test_round_trip_keys_labels_inputs_and_extras(tmp_path):
    samples = _samples(9)
    _write_set(tmp_path / "set", samples)
    shards = open_shard_set(tmp_path / "set")
    back = list(shards.samples())
    assert [(b.key, b.ext, b.data, b.label, b.extras) for b in back] == [
        (s.key, s.ext, s.data, s.label, s.extras) for s in samples
    ]
    assert shards.num_samples == 9 and shards.classes == ["a", "b", "c"] and shards.input_spec == SPEC


def test_unlabeled_set_has_no_cls_members(tmp_path):
    _write_set(tmp_path / "u", _samples(5), labeled=False)
    shards = open_shard_set(tmp_path / "u")
    assert shards.labeled is False and shards.class_counts is None
    for path in shards.shard_paths:
        with tarfile.open(path) as tar:
            names = tar.getnames()
        assert names and not [n for n in names if n.endswith(".cls")]
    assert all(s.label is None for s in shards.samples())


@pytest.mark.parametrize("key", ["a.b", "a/b", "..", "../x", "", "sp ace", "x.png"])
def test_keys_with_dots_slashes_or_other_characters_are_rejected(tmp_path, key):
    with pytest.raises(ShardError, match="invalid sample key"):
        validate_key(key)
    writer = ShardWriter(tmp_path / "w", input_spec=SPEC, classes=["a", "b"], labeled=True, provenance={})
    with pytest.raises(ShardError, match="invalid sample key"):
        writer.write(Sample(key, "png", b"x", 0))


def test_valid_keys_duplicates_labels_and_long_keys(tmp_path):
    validate_key("cifar10-train-0000001_A")
    writer = ShardWriter(tmp_path / "w", input_spec=SPEC, classes=["a", "b"], labeled=True, provenance={})
    writer.write(Sample("k", "png", b"x", 1))
    with pytest.raises(ShardError, match="duplicate sample key 'k'"):
        writer.write(Sample("k", "png", b"y", 1))
    with pytest.raises(ShardError, match="label 2, outside"):
        writer.write(Sample("k2", "png", b"y", 2))
    with pytest.raises(ShardError, match="no label"):
        writer.write(Sample("k3", "png", b"y", None))
    with pytest.raises(ShardError, match="shorter"):  # a ustar name holds 100 bytes
        writer.write(Sample("k" * 120, "png", b"y", 0))


def test_decode_input_gray_rgb_vector_and_corrupt():
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    rgb = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    assert np.array_equal(decode_input(Sample("g", "png", encode_png(gray))), gray)
    assert np.array_equal(decode_input(Sample("c", "png", encode_png(rgb))), rgb)
    vec = decode_input(Sample("v", "npy", encode_npy(np.array([1.5, -2.0]))))
    assert vec.dtype == np.float32 and vec.tolist() == [1.5, -2.0]
    with pytest.raises(ShardError, match="'bad-key' cannot be decoded as png"):
        decode_input(Sample("bad-key", "png", b"\x89PNG garbage"), "somewhere.tar")


def test_npy_inputs_are_never_unpickled():
    payload = io.BytesIO()
    np.save(payload, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ShardError, match="cannot be decoded"):
        decode_input(Sample("obj", "npy", payload.getvalue()))


def test_index_matches_tarfile_offsets_and_write_raw_reproduces_the_shard(tmp_path):
    samples = _samples(7)
    _write_set(tmp_path / "set", samples, max_per_shard=100)
    path = tmp_path / "set/shard-000000.tar"
    index = index_shard(path, num_classes=3)
    assert index is not None and index.keys == [s.key for s in samples]
    assert index.labels.tolist() == [s.label for s in samples]
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    first = {}
    for m in members:
        first.setdefault(m.name.split(".")[0], m.offset)
        if m.name.endswith(".cls"):
            row = index.bounds[index.keys.index(m.name.split(".")[0])]
            assert row[2] == m.offset and row[3] == m.offset_data + 512
    assert index.bounds[:, 0].tolist() == [first[k] for k in index.keys]
    assert index.bounds[1:, 0].tolist() == index.bounds[:-1, 1].tolist()  # samples are back to back
    # Copying those byte ranges through write_raw gives the same shard as writing the samples.
    data = path.read_bytes()
    writer = ShardWriter(
        tmp_path / "copy",
        input_spec=SPEC,
        classes=["a", "b", "c"],
        labeled=True,
        provenance={"test": True},
        max_per_shard=100,
        extras=("logits.npy",),
    )
    for key, label, (start, end, _, _) in zip(index.keys, index.labels.tolist(), index.bounds.tolist()):
        writer.write_raw(key, label, data[start:end])
    writer.close()
    assert (tmp_path / "copy/shard-000000.tar").read_bytes() == data


def test_index_leaves_pax_shards_to_tarfile(tmp_path):
    import webdataset as wds

    path = tmp_path / "wds.tar"
    with wds.TarWriter(str(path)) as sink:  # pax headers (float mtimes)
        sink.write({"__key__": "k1", "png": b"abc", "cls": b"1"})
        sink.write({"__key__": "k2", "png": b"def", "cls": b"0"})
    assert index_shard(path) is None
    assert read_keys_and_labels(path) == [("k1", 1), ("k2", 0)]
    assert [(s.key, s.data, s.label) for s in read_shard(path)] == [("k1", b"abc", 1), ("k2", b"def", 0)]


def _shard(tmp_path, n=6) -> Path:
    _write_set(tmp_path / "set", _samples(n), max_per_shard=100)
    return tmp_path / "set/shard-000000.tar"


def _all_readers(path: Path):
    yield lambda: list(read_shard(path, num_classes=3))
    yield lambda: read_keys_and_labels(path)
    yield lambda: index_shard(path, num_classes=3)


def test_truncation_at_a_member_boundary_is_an_error_for_every_reader(tmp_path):
    # tarfile itself treats a missing end-of-archive marker as a normal end: we must not.
    path = _shard(tmp_path)
    with tarfile.open(path) as tar:
        cut = tar.getmembers()[6].offset  # the start of the 4th sample's first member
    path.write_bytes(path.read_bytes()[:cut])
    for read in _all_readers(path):
        with pytest.raises(ShardError, match="truncated"):
            read()


def test_truncation_inside_a_member_is_an_error_for_every_reader(tmp_path):
    path = _shard(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    for read in _all_readers(path):
        with pytest.raises(ShardError, match=str(path)):
            read()


def test_a_corrupt_header_in_the_middle_is_an_error_for_every_reader(tmp_path):
    path = _shard(tmp_path)
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[4].offset
    data = bytearray(path.read_bytes())
    data[offset + 2] ^= 0x01  # a flipped bit in a member name: the header checksum no longer matches
    path.write_bytes(bytes(data))
    for read in _all_readers(path):
        with pytest.raises(ShardError, match="corrupt|checksum"):
            read()


@pytest.mark.parametrize("content", [b"", b"not a tar file at all", b"\x01" * 4096])
def test_files_that_are_not_tars(tmp_path, content):
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    for read in list(_all_readers(path))[:2]:
        with pytest.raises(ShardError, match=str(path)):
            read()
    try:  # the index either names the file or leaves a header it does not know to tarfile (above)
        assert index_shard(path) is None
    except ShardError as exc:
        assert str(path) in exc.message


def _hand_written(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.write_bytes(_tarfile_bytes(members))
    return path


@pytest.mark.parametrize(
    "members, message",
    [
        ([("a.png", b"x"), ("a.cls", b"0"), ("b.png", b"y"), ("a.cls", b"1")], "'a' appears twice"),
        ([("a.png", b"x"), ("a.cls", b"7")], "label 7, outside 0..2"),
        ([("a.png", b"x"), ("a.cls", b"one")], "not an integer"),
        ([("a.cls", b"0")], "no input member"),
        ([("a.png", b"x"), ("a.jpg", b"y")], "two inputs"),
        ([("noext", b"x")], "not of the form"),
    ],
)
def test_bad_samples_are_named_by_every_reader_that_checks_them(tmp_path, members, message):
    path = _hand_written(tmp_path / "s.tar", members)
    with pytest.raises(ShardError, match=message):
        list(read_shard(path, num_classes=3))
    with pytest.raises(ShardError, match=message):
        index_shard(path, num_classes=3)


def test_open_shard_set_errors_name_the_file(tmp_path):
    _write_set(tmp_path / "set", _samples(6))
    (tmp_path / "set/shard-000001.tar").unlink()
    with pytest.raises(ShardError, match="shard-000001.tar is listed in .*manifest.json but missing"):
        open_shard_set(tmp_path / "set")
    with pytest.raises(ShardError, match="does not exist"):
        open_shard_set(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShardError, match="is not a shard set"):
        open_shard_set(tmp_path / "file")


def test_brace_pattern_without_manifest(tmp_path):
    _write_set(tmp_path / "set", _samples(6), max_per_shard=2)
    shards = open_shard_set(f"{tmp_path}/set/shard-{{000000..000002}}.tar")
    # The manifest.json beside the shards supplies the metadata and checksums.
    assert shards.origin == str(tmp_path / "set/manifest.json") and len(shards.shard_paths) == 3
    assert shards.num_samples == 6 and shards.shard_checksums == [s["sha256"] for s in shards.manifest["shards"]]
    assert [s.key for s in shards.samples()] == [f"s-{i:04d}" for i in range(6)]
    with pytest.raises(ShardError, match="shard-000003.tar does not exist"):
        open_shard_set(f"{tmp_path}/set/shard-{{000000..000003}}.tar")

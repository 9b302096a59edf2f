"""`mpl data import | split | info` through the CLI, in-process and as real subprocesses, on data made at test time."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mpltools.data.codecs import decode_input
from mpltools.data.opening import open_shard_set
from tests import fakes
from tests.e2e.helpers import REPO, ok, python, run_process


@pytest.fixture(params=["in-process", "subprocess"])
def mpl(request, run_cli, run_subprocess):
    """The same test once through Typer's CliRunner and once as `python -m mpltools` in a child process."""
    return run_cli if request.param == "in-process" else run_subprocess


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "digits"
    ok("-q", "data", "import", "digits", "--out", out)
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """200 8x8 RGB images of 10 classes in 4 shards."""
    out = tmp_path_factory.mktemp("synthetic") / "syn"
    ok("-q", "data", "import", "synthetic", "--num-samples", "200", "--image-size", "8", "--max-per-shard", "60", "--out", out)
    return out


def _records(folder: Path) -> dict[str, tuple[int | None, bytes]]:
    """key -> (label, encoded input) of a shard set, read with plain tarfile."""
    out: dict[str, list] = {}
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                rec = out.setdefault(key, [None, None])
                data = tar.extractfile(m).read()
                if ext == "cls":
                    rec[0] = int(data)
                else:
                    rec[1] = data
    return {k: (v[0], v[1]) for k, v in out.items()}


def _members(folder: Path) -> list[str]:
    names = []
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            names += tar.getnames()
    return names


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _sha_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists(), f"{out} was created"
    leftovers = [p.name for p in out.parent.iterdir() if ".tmp-" in p.name]
    assert not leftovers, f"temporary folders left behind: {leftovers}"


def _info(run, folder: Path) -> dict:
    code, out, err = run("data", "info", folder, "--verify", "--json")
    assert code == 0, err
    return json.loads(out)


# --- the pipeline ---------------------------------------------------------------------------------------------


def test_digits_import_split_info_pipeline(mpl, tmp_path):
    code, out, err = mpl("data", "import", "digits", "--out", tmp_path / "d")
    assert (code, out) == (0, f"{tmp_path / 'd'}\n") and "importing 1,797 samples of digits" in err
    code, out, err = mpl(
        "data",
        "split",
        tmp_path / "d",
        "--out",
        tmp_path / "s",
        "--labeled-per-class",
        "5",
        "--val-per-class",
        "20",
        "--seed",
        "1",
    )
    assert code == 0, err
    assert out.splitlines() == [str(tmp_path / "s" / p) for p in ("labeled", "unlabeled", "val")]
    labeled, unlabeled, val = (_info(mpl, tmp_path / "s" / p) for p in ("labeled", "unlabeled", "val"))
    assert labeled["verified"] and unlabeled["verified"] and val["verified"]
    assert labeled["class_counts"] == labeled["counted_class_counts"] == [5] * 10 and labeled["counted_samples"] == 50
    assert val["class_counts"] == val["counted_class_counts"] == [20] * 10 and val["counted_samples"] == 200
    assert unlabeled["labeled"] is False and unlabeled["counted_samples"] == unlabeled["num_samples"] == 1797 - 250
    assert not [n for n in _members(tmp_path / "s/unlabeled") if n.endswith(".cls")]
    source = _records(tmp_path / "d")
    parts = {p: _records(tmp_path / "s" / p) for p in ("labeled", "unlabeled", "val")}
    keys = {p: set(r) for p, r in parts.items()}
    assert (
        not (keys["labeled"] & keys["val"])
        and not (keys["labeled"] & keys["unlabeled"])
        and not (keys["val"] & keys["unlabeled"])
    )
    assert keys["labeled"] | keys["val"] | keys["unlabeled"] == set(source)
    for p, records in parts.items():  # inputs copied unchanged; labels kept (and removed from unlabeled/)
        for key, (label, data) in records.items():
            assert data == source[key][1] and label == (None if p == "unlabeled" else source[key][0])
    provenance = _manifest(tmp_path / "s/labeled")["provenance"]
    assert provenance["seed"] == 1 and provenance["part"] == "labeled"
    assert provenance["source_manifest_sha256"] == hashlib.sha256((tmp_path / "d/manifest.json").read_bytes()).hexdigest()


def test_include_labeled_in_unlabeled(run_cli, digits, tmp_path):
    code, _, err = run_cli(
        "data",
        "split",
        digits,
        "--out",
        tmp_path / "s",
        "--labeled-per-class",
        "5",
        "--val-per-class",
        "20",
        "--seed",
        "1",
        "--include-labeled-in-unlabeled",
    )
    assert code == 0, err
    labeled, unlabeled, val = (set(_records(tmp_path / "s" / p)) for p in ("labeled", "unlabeled", "val"))
    assert len(unlabeled) == _manifest(tmp_path / "s/unlabeled")["num_samples"] == 1797 - 200
    assert labeled <= unlabeled and not (val & unlabeled) and len(labeled) == 50


def test_same_seed_gives_identical_files_and_another_seed_another_split(run_subprocess, digits, tmp_path):
    shutil.copytree(digits, tmp_path / "src/digits")
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        (tmp_path / name).mkdir()
        # The same relative command line in two folders: even manifest.json (which records it) must be byte-identical.
        code, _, err = run_subprocess(
            "data",
            "split",
            "../src/digits",
            "--out",
            "split",
            "--labeled-per-class",
            "5",
            "--val-per-class",
            "20",
            "--seed",
            seed,
            cwd=tmp_path / name,
        )
        assert code == 0, err
    a, b = _sha_tree(tmp_path / "a/split"), _sha_tree(tmp_path / "b/split")
    assert a == b and len(a) == 6
    c = _sha_tree(tmp_path / "c/split")
    assert c["labeled/shard-000000.tar"] != a["labeled/shard-000000.tar"]
    assert set(_records(tmp_path / "a/split/labeled")) != set(_records(tmp_path / "c/split/labeled"))


def test_real_shell_pipeline(tmp_path):
    script = """
    set -euo pipefail
    src=$(mpl -q data import digits --out d)
    test "$src" = d
    labeled=$(mpl data split "$src" --out s --labeled-per-class 5 --val-per-class 20 --seed 1 | sed -n 1p)
    mpl data info "$labeled" --verify > verify.txt
    mpl data info "$(mpl data import twomoon --out t --num-samples 100)" --json > twomoon.json
    echo s/val | mpl data info - --json | python -c 'import json, sys; print(json.load(sys.stdin)["num_samples"])'
    """
    r = run_process(["bash", "-c", script], cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "200\n"
    assert "verify      OK" in (tmp_path / "verify.txt").read_text()
    assert json.loads((tmp_path / "twomoon.json").read_text())["num_samples"] == 100


def test_stdout_carries_only_results(mpl, synthetic, tmp_path):
    code, out, err = mpl("-q", "data", "import", "twomoon", "--num-samples", "50", "--out", tmp_path / "t", "--json")
    assert code == 0 and err == ""  # -q: nothing on stderr
    assert json.loads(out)["num_samples"] == 50
    code, out, err = mpl("data", "split", synthetic, "--out", tmp_path / "s", "--labeled-per-class", "1", "--json")
    assert code == 0 and "split: copy" in err
    report = json.loads(out)
    assert report["labeled"]["num_samples"] == 10 and report["unlabeled"]["path"] == str(tmp_path / "s/unlabeled")
    code, out, err = mpl("data", "info", synthetic)
    assert code == 0 and out.startswith(f"shard set   {synthetic}\n") and "200 in 4 shard(s), labelled" in out
    code, out, err = mpl("data", "info", "-", "--json", input=f"{tmp_path / 's/val'}\n")  # '-': the path comes on stdin
    assert code == 0 and json.loads(out)["path"] == str(tmp_path / "s/val"), err


# --- sizes and presets ----------------------------------------------------------------------------------------


def test_totals_are_spread_evenly(run_cli, synthetic, tmp_path):
    code, _, err = run_cli("data", "split", synthetic, "--out", tmp_path / "a", "--labeled", "40", "--val", "50")
    assert code == 0, err
    assert _manifest(tmp_path / "a/labeled")["class_counts"] == [4] * 10
    assert _manifest(tmp_path / "a/val")["class_counts"] == [5] * 10
    assert _manifest(tmp_path / "a/unlabeled")["num_samples"] == 110
    code, _, err = run_cli("data", "split", synthetic, "--out", tmp_path / "b", "--labeled", "43")
    assert code == 0, err
    counts = _manifest(tmp_path / "b/labeled")["class_counts"]
    assert sum(counts) == 43 and sorted(counts) == [4] * 7 + [5] * 3
    assert _manifest(tmp_path / "b/val")["num_samples"] == 0


def test_labeled_fraction(run_cli, synthetic, tmp_path):
    code, _, err = run_cli(
        "data", "split", synthetic, "--out", tmp_path / "s", "--labeled-fraction", "0.25", "--val-per-class", "2"
    )
    assert code == 0, err
    source = np.array(_manifest(synthetic)["class_counts"])
    assert _manifest(tmp_path / "s/labeled")["class_counts"] == np.floor(source * 0.25).astype(int).tolist()
    assert _manifest(tmp_path / "s/val")["class_counts"] == [2] * 10


def test_preset_too_big_for_the_set_is_a_clear_error(mpl, synthetic, tmp_path):
    code, out, err = mpl("data", "split", synthetic, "--out", tmp_path / "s", "--preset", "cifar10-4k")
    assert code == 1 and out == ""
    assert "fewer than the 400 labelled + 500 validation asked for" in err
    _assert_nothing_written(tmp_path / "s")


def test_preset_imagenet_heldout_labels_everything_but_val(run_cli, synthetic, tmp_path):
    code, _, err = run_cli(
        "data", "split", synthetic, "--out", tmp_path / "s", "--preset", "imagenet-heldout", "--val-per-class", "2"
    )
    assert code == 0, err
    source = np.array(_manifest(synthetic)["class_counts"])
    assert _manifest(tmp_path / "s/labeled")["class_counts"] == (source - 2).tolist()
    assert _manifest(tmp_path / "s/val")["class_counts"] == [2] * 10
    unlabeled = _manifest(tmp_path / "s/unlabeled")
    assert unlabeled["num_samples"] == 0 and unlabeled["shards"] == []
    assert _info(run_cli, tmp_path / "s/unlabeled")["verified"]


def test_more_labeled_per_class_than_exist(mpl, digits, tmp_path):
    code, out, err = mpl("data", "split", digits, "--out", tmp_path / "s", "--labeled-per-class", "500")
    assert code == 1 and out == "" and "class '0' has 178 samples, fewer than the 500 labelled" in err
    _assert_nothing_written(tmp_path / "s")


# --- importers --------------------------------------------------------------------------------------------------


def _decoded(folder: Path) -> dict[str, tuple[np.ndarray, int | None]]:
    shards = open_shard_set(folder)
    return {s.key: (decode_input(s), s.label) for s in shards.samples()}


def test_import_twomoon(mpl, tmp_path):
    code, _, err = mpl("data", "import", "twomoon", "--out", tmp_path / "a")
    assert code == 0, err
    m = _manifest(tmp_path / "a")
    assert m["num_samples"] == 2000 and m["class_counts"] == [1000, 1000]
    assert m["input"] == {"kind": "vector", "encoding": "npy", "shape": [2], "dtype": "float32"}
    points = _decoded(tmp_path / "a")
    assert all(x.shape == (2,) and x.dtype == np.float32 for x, _ in points.values())
    for args in (["--noise", "0.2"], ["--seed", "1"]):
        code, _, err = mpl("data", "import", "twomoon", "--out", tmp_path / args[0], *args)
        assert code == 0, err
        other = _decoded(tmp_path / args[0])
        assert other.keys() == points.keys()
        assert not all(np.array_equal(points[k][0], other[k][0]) for k in points)


def test_import_synthetic_any_size_classes_channels(run_cli, tmp_path):
    code, _, err = run_cli(
        "data",
        "import",
        "synthetic",
        "--num-samples",
        "30",
        "--num-classes",
        "3",
        "--image-size",
        "6",
        "--channels",
        "1",
        "--max-per-shard",
        "7",
        "--out",
        tmp_path / "s",
    )
    assert code == 0, err
    m = _manifest(tmp_path / "s")
    assert m["num_samples"] == 30 and len(m["classes"]) == 3 and m["input"]["shape"] == [6, 6, 1]
    assert [s["count"] for s in m["shards"]] == [7, 7, 7, 7, 2]
    assert all(x.shape == (6, 6, 1) for x, _ in _decoded(tmp_path / "s").values())


def test_import_digits_class_names(run_cli, digits):
    m = _manifest(digits)
    assert m["num_samples"] == 1797 and m["classes"] == [str(c) for c in range(10)] and m["input"]["shape"] == [8, 8, 1]
    assert sum(m["class_counts"]) == 1797 and m["class_counts"][0] == 178


def test_import_imagefolder_keeps_bytes(mpl, tmp_path):
    fake = fakes.image_folder(tmp_path / "tree")
    code, _, err = mpl("data", "import", "imagefolder", fake.path, "--out", tmp_path / "s")
    assert code == 0, err
    m = _manifest(tmp_path / "s")
    assert m["classes"] == ["cat", "dog", "zebra"] and m["class_counts"] == [3, 2, 1] and m["input"]["encoding"] == "mixed"
    by_bytes = {data: rel for rel, data in fake.files.items()}
    names = _members(tmp_path / "s")
    for key, (label, data) in _records(tmp_path / "s").items():
        rel = by_bytes[data]  # stored as the original encoded file
        assert m["classes"][label] == rel.split("/")[0]
        assert f"{key}.{'png' if rel.endswith('.png') else 'jpg'}" in names


@pytest.mark.parametrize(
    "builder, name",
    [
        (fakes.cifar10_binary, "cifar10"),
        (fakes.cifar100_binary, "cifar100"),
        (fakes.cifar10_python, "cifar10"),
        (fakes.cifar100_python, "cifar100"),
    ],
)
@pytest.mark.parametrize("archive", [True, False], ids=["tar.gz", "folder"])
def test_import_cifar(run_cli, tmp_path, builder, name, archive):
    fake = builder(tmp_path / "raw", archive=archive)
    for split in ("train", "test"):
        code, _, err = run_cli("data", "import", name, fake.path, "--split", split, "--out", tmp_path / split)
        assert code == 0, err
        m = _manifest(tmp_path / split)
        assert m["classes"] == fake.classes and m["num_samples"] == len(fake.labels[split])
        for key, (image, label) in _decoded(tmp_path / split).items():
            i = int(key.rsplit("-", 1)[1])
            assert label == fake.labels[split][i] and np.array_equal(image, fake.images[split][i])


def test_import_cifar_subprocess(run_subprocess, tmp_path):
    fake = fakes.cifar10_binary(tmp_path / "raw")
    code, out, err = run_subprocess("data", "import", "cifar10", fake.path, "--out", tmp_path / "c")
    assert (code, out) == (0, f"{tmp_path / 'c'}\n"), err
    got = _decoded(tmp_path / "c")
    key = sorted(got)[3]
    assert np.array_equal(got[key][0], fake.images["train"][int(key.rsplit("-", 1)[1])])


def test_import_svhn(mpl, tmp_path):
    fake = fakes.svhn_mat(tmp_path / "train_32x32.mat")
    code, _, err = mpl("data", "import", "svhn", fake.path, "--out", tmp_path / "s")
    assert code == 0, err
    got = _decoded(tmp_path / "s")
    assert _manifest(tmp_path / "s")["class_counts"] == [2] * 10  # label 10 became digit 0
    for key, (image, label) in got.items():
        i = int(key.rsplit("-", 1)[1])
        assert label == fake.labels["train"][i] and np.array_equal(image, fake.images["train"][i])


def test_pickle_payload_is_refused_and_never_runs(mpl, tmp_path):
    marker = tmp_path / "pwned"
    evil = (
        b"\x80\x02cposix\nsystem\nq\x00X"
        + len(f"touch {marker}").to_bytes(4, "little")
        + f"touch {marker}".encode()
        + b"q\x01\x85q\x02Rq\x03."
    )
    fake = fakes.cifar10_python(tmp_path / "raw", archive=False)
    (fake.path / "data_batch_2").write_bytes(evil)
    code, out, err = mpl("data", "import", "cifar10", fake.path, "--out", tmp_path / "c")
    assert code == 1 and out == ""
    assert "data_batch_2 is not a CIFAR python batch (refusing to load posix.system" in err
    assert not marker.exists()
    _assert_nothing_written(tmp_path / "c")


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: (
                (fakes.cifar10_binary(p, archive=False).path / "test_batch.bin").write_bytes(b"\0" * 3000)
                and p / "cifar-10-batches-bin"
            ),
            "test_batch.bin has 3000 bytes, not a multiple of the 3073-byte cifar10 record",
        ),
        (
            lambda p: (
                __import__("scipy.io").io.savemat(
                    p / "train_32x32.mat", {"X": np.zeros((32, 32, 1, 3), np.uint8), "y": np.ones((3, 1))}
                )
                or p / "train_32x32.mat"
            ),
            "train_32x32.mat has the wrong shape",
        ),
    ],
)
def test_dataset_files_of_the_wrong_size_or_shape(mpl, tmp_path, make, message):
    path = make(tmp_path)
    name = "svhn" if str(path).endswith(".mat") else "cifar10"
    code, _, err = (
        mpl("data", "import", name, path, "--split", "test", "--out", tmp_path / "o")
        if name == "cifar10"
        else mpl("data", "import", name, path, "--out", tmp_path / "o")
    )
    assert code == 1 and message in err and str(tmp_path) in err
    _assert_nothing_written(tmp_path / "o")


# --- bad shard sets ---------------------------------------------------------------------------------------------


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _reseal(folder: Path) -> None:
    """Make manifest.json agree with the shards again (counts, checksums), so only the planted defect remains."""
    m = _manifest(folder)
    for shard in m["shards"]:
        path = folder / shard["name"]
        shard["count"] = len({name.split(".")[0] for name, _ in _tar_members(path)})
        shard["sha256"], shard["bytes"] = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size
    m["num_samples"] = sum(s["count"] for s in m["shards"])
    (folder / "manifest.json").write_text(json.dumps(m))


def _edit_manifest(folder: Path, edit) -> None:
    m = _manifest(folder)
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _first_key(folder: Path, shard: int) -> str:
    return _tar_members(folder / f"shard-{shard:06d}.tar")[0][0].split(".")[0]


def _plant_garbage_png(d: Path) -> str:
    members = _tar_members(d / "shard-000002.tar")
    members[0] = (members[0][0], b"\x89PNG\r\n\x1a\n this is not an image")
    _tar(d / "shard-000002.tar", members)
    _reseal(d)
    return members[0][0].split(".")[0]


def _plant_duplicate(d: Path) -> str:
    first = _tar_members(d / "shard-000000.tar")[:2]  # the first sample: png and cls
    _tar(d / "shard-000003.tar", _tar_members(d / "shard-000003.tar") + first)
    _reseal(d)
    return first[0][0].split(".")[0]


def _plant_label(d: Path) -> str:
    members = _tar_members(d / "shard-000001.tar")
    members[1] = (members[1][0], b"10")  # 10 classes: labels are 0..9
    _tar(d / "shard-000001.tar", members)
    _reseal(d)
    return members[1][0].split(".")[0]


def _drop_label(d: Path) -> str:
    members = _tar_members(d / "shard-000001.tar")
    assert members[1][0].endswith(".cls")
    _tar(d / "shard-000001.tar", members[:1] + members[2:])
    _reseal(d)
    return members[0][0].split(".")[0]


def _flip_byte(d: Path) -> str:
    path = d / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # inside the first sample's png
    path.write_bytes(bytes(data))
    return "shard-000001.tar"


def _cut(d: Path) -> str:
    path = d / "shard-000002.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "shard-000002.tar"


# name -> (plant(d) -> the file or key the message must name, commands that must fail)
DEFECTS = {
    "missing-manifest": (lambda d: (d / "manifest.json").unlink() or "manifest.json", ("split", "info")),
    "bad-json": (
        lambda d: (d / "manifest.json").write_text('{"format": "mpltools.shardset", ') and "manifest.json",
        ("split", "info"),
    ),
    "wrong-format-version": (
        lambda d: _edit_manifest(d, lambda m: m.update(format_version=99)) or "format_version 99",
        ("split", "info"),
    ),
    "counts-do-not-add-up": (
        lambda d: _edit_manifest(d, lambda m: m.update(num_samples=201)) or "do not add up",
        ("split", "info"),
    ),
    "shard-count-differs": (
        lambda d: (
            _edit_manifest(d, lambda m: m["shards"][1].update(count=59) or m["shards"][2].update(count=61)) or "shard-000001.tar"
        ),
        ("split", "info"),
    ),
    "shard-missing": (lambda d: (d / "shard-000003.tar").unlink() or "shard-000003.tar", ("split", "info")),
    "checksum-mismatch": (_flip_byte, ("split", "info")),
    "truncated-shard": (_cut, ("split", "info")),
    "not-a-tar": (
        lambda d: (d / "shard-000001.tar").write_bytes(b"PK\x03\x04 a zip, not a tar" * 40) and "shard-000001.tar",
        ("split", "info"),
    ),
    "corrupt-image": (_plant_garbage_png, ("info",)),
    "duplicate-key": (_plant_duplicate, ("split", "info")),
    "label-out-of-range": (_plant_label, ("split", "info")),
    "label-missing": (_drop_label, ("split", "info")),
}


@pytest.mark.parametrize("defect, command", [(d, c) for d, (_, commands) in DEFECTS.items() for c in commands])
def test_bad_shard_sets_fail_clearly_and_write_nothing(mpl, synthetic, tmp_path, defect, command):
    plant, _ = DEFECTS[defect]
    bad = tmp_path / "bad"
    shutil.copytree(synthetic, bad)
    named = plant(bad)
    before = _sha_tree(bad)
    if command == "split":
        code, out, err = mpl("data", "split", bad, "--out", tmp_path / "out", "--labeled-per-class", "1")
        _assert_nothing_written(tmp_path / "out")
    else:
        code, out, err = mpl("data", "info", bad, "--verify")
    assert code == 1, (out, err)
    assert named in out + err and str(bad) in out + err
    assert "Traceback" not in err
    assert _sha_tree(bad) == before  # the input is left alone


def test_not_a_shard_set(mpl, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder/notes.txt").write_text("hello")
    for args in (
        ["split", tmp_path / "folder", "--out", tmp_path / "o", "--labeled", "1"],
        ["info", tmp_path / "folder"],
        ["info", tmp_path / "folder/notes.txt"],
        ["info", tmp_path / "nowhere"],
    ):
        code, out, err = mpl("data", *args)
        assert code == 1 and out == "" and str(tmp_path) in err and ("not a shard set" in err or "does not exist" in err)
    _assert_nothing_written(tmp_path / "o")


def test_existing_output_needs_force(mpl, synthetic, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    for args in (["import", "twomoon", "--num-samples", "10"], ["split", synthetic, "--labeled-per-class", "1"]):
        code, stdout, err = mpl("data", *args, "--out", out)
        assert code == 1 and stdout == "" and "already exists; pass --force" in err
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    code, _, err = mpl("data", "split", synthetic, "--labeled-per-class", "1", "--out", out, "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["labeled", "unlabeled", "val"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    code, _, err = mpl("data", "import", "twomoon", "--num-samples", "10", "--out", out, "--force")
    assert code == 0 and _manifest(out)["num_samples"] == 10


def test_outputs_get_ordinary_permissions(run_cli, synthetic, tmp_path):
    code, _, _ = run_cli("data", "split", synthetic, "--labeled-per-class", "1", "--out", tmp_path / "s")
    assert code == 0
    (tmp_path / "reference").mkdir()  # what the umask gives an ordinary folder (mkdtemp would give 0700)
    assert (tmp_path / "s").stat().st_mode & 0o777 == (tmp_path / "reference").stat().st_mode & 0o777


@pytest.mark.parametrize(
    "args",
    [
        ["data", "split", "x", "--out", "y", "--bogus"],
        ["data", "split", "x", "--labeled", "3"],  # no --out
        ["data", "import", "digits"],  # no --out
        ["data", "import", "nonsense", "--out", "y"],
        ["data", "split", "{synthetic}", "--out", "{tmp}/y", "--preset", "cifar-10k"],
        ["data", "split", "{synthetic}", "--out", "{tmp}/y", "--labeled", "10", "--labeled-per-class", "3"],
        ["data", "split", "{synthetic}", "--out", "{tmp}/y", "--val", "10", "--val-fraction", "0.1", "--labeled", "3"],
        ["data", "split", "{synthetic}", "--out", "{tmp}/y", "--labeled-fraction", "1.5"],
        ["data", "split", "{synthetic}", "--out", "{tmp}/y"],  # no labelled size
        ["data", "import", "digits", "{synthetic}", "--out", "{tmp}/y"],  # built in: takes no PATH
        ["data", "import", "cifar10", "--out", "{tmp}/y"],  # needs a PATH
        ["data", "import", "synthetic", "--channels", "2", "--out", "{tmp}/y"],
        ["data", "info", "-"],  # '-' with empty stdin
    ],
)
def test_usage_errors_exit_2(mpl, synthetic, tmp_path, args):
    code, out, err = mpl(*[a.format(synthetic=synthetic, tmp=tmp_path) for a in args])
    assert code == 2 and out == "", (code, out, err)
    assert err.strip()
    _assert_nothing_written(tmp_path / "y")


# --- entry points, imports, compatibility -----------------------------------------------------------------------


@pytest.mark.parametrize("launcher", [["mpl"], ["-m", "mpltools"]], ids=["repo-root-mpl", "python-m"])
def test_launchers_print_the_version(launcher):
    from mpltools import __version__

    r = python(*launcher, "--version", cwd=REPO)
    assert (r.returncode, r.stdout) == (0, f"mpl (mpltools) {__version__}\n"), r.stderr


def test_shards_are_plain_webdataset(run_cli, synthetic, tmp_path):
    import webdataset as wds

    code, _, _ = run_cli("data", "split", synthetic, "--labeled-per-class", "3", "--out", tmp_path / "s")
    assert code == 0
    for folder in (synthetic, tmp_path / "s/labeled", tmp_path / "s/unlabeled"):
        urls = [str(p) for p in sorted(folder.glob("shard-*.tar"))]
        got = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
        expected = _records(folder)
        assert got.keys() == expected.keys()
        for key, (label, data) in expected.items():
            assert got[key]["png"] == data  # raw bytes: no decoder involved
            assert got[key].get("cls") == (None if label is None else str(label).encode())


def test_split_of_shards_written_by_webdataset(run_cli, synthetic, tmp_path):
    """Shards with pax headers (webdataset.TarWriter) take the tarfile path and split exactly like ours."""
    import webdataset as wds

    theirs = tmp_path / "theirs"
    shutil.copytree(synthetic, theirs)
    for path in sorted(theirs.glob("shard-*.tar")):
        members = _tar_members(path)
        samples: dict[str, dict] = {}
        for name, data in members:
            key, ext = name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[ext] = data
        with wds.TarWriter(str(path)) as sink:
            for sample in samples.values():
                sink.write(sample)
    _reseal(theirs)
    assert _sha_tree(theirs)["shard-000000.tar"] != _sha_tree(synthetic)["shard-000000.tar"]
    for name, src in (("ours", synthetic), ("theirs", theirs)):
        code, _, err = run_cli(
            "data",
            "split",
            src,
            "--labeled-per-class",
            "2",
            "--val-per-class",
            "3",
            "--seed",
            "4",
            "--out",
            tmp_path / f"split-{name}",
        )
        assert code == 0, err
    for part in ("labeled", "unlabeled", "val"):
        assert _records(tmp_path / "split-ours" / part) == _records(tmp_path / "split-theirs" / part)
        assert _info(run_cli, tmp_path / "split-theirs" / part)["verified"]
    data = bytearray((theirs / "shard-000001.tar").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (theirs / "shard-000001.tar").write_bytes(bytes(data))
    code, _, err = run_cli("data", "split", theirs, "--labeled-per-class", "2", "--out", tmp_path / "again")
    assert code == 1 and "shard-000001.tar" in err
    _assert_nothing_written(tmp_path / "again")

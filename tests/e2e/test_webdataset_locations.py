"""WebDataset conventions: brace patterns, http:// and pipe: locations, `mpl data import webdataset`.

Tiny data made at test time: a 120-sample TwoMoon set in 3 shards, its split, and manifest-less copies
written by plain `webdataset.TarWriter`. Remote shards are served by `python -m http.server` on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from mpltools.data.shards import sha256_file
from tests.e2e.helpers import ok, sets

THREE = "shard-{000000..000002}.tar"


def _members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _plain_copy(folder: Path, dest: Path) -> Path:
    """The shards of `folder` rewritten by webdataset.TarWriter, with no manifest.json."""
    import webdataset as wds

    dest.mkdir(parents=True)
    for path in sorted(folder.glob("shard-*.tar")):
        samples: dict[str, dict] = {}
        for name, data in _members(path):
            key, ext = name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[ext] = data
        with wds.TarWriter(str(dest / path.name)) as sink:
            for sample in samples.values():
                sink.write(sample)
    return dest


@pytest.fixture(scope="module")
def moons(tmp_path_factory) -> Path:
    """all/ (120 samples, 3 shards), split/{labeled,unlabeled,val}, and plain/<same> copies without manifests."""
    root = tmp_path_factory.mktemp("wds")
    ok("-q", "data", "import", "twomoon", "--num-samples", "120", "--scale", "20", "--max-per-shard", "40", "--out", root / "all")
    ok(
        "-q",
        "data",
        "split",
        root / "all",
        "--labeled-per-class",
        "5",
        "--val-per-class",
        "10",
        "--max-per-shard",
        "40",
        "--out",
        root / "split",
    )
    for part in ("all", "split/labeled", "split/unlabeled", "split/val"):
        _plain_copy(root / part, root / "plain" / part)
    return root


def _train_args(labeled: str, unlabeled: str, val: str, out: Path) -> list[str]:
    return [
        "train",
        "recipes/tiny/twomoon.toml",
        "--out",
        out,
        *sets("schedule.steps=3", f"data.labeled={labeled}", f"data.unlabeled={unlabeled}", f"data.val={val}"),
        "--json",
    ]


def _eval(run_cli, checkpoint: Path, data: str) -> dict:
    """The metrics of `mpl eval --json`, without the echo of the location."""
    code, out, err = run_cli("eval", checkpoint, "--data", data, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report.pop("data") == data
    return report


@pytest.fixture(scope="module")
def student(moons) -> Path:
    """A 3-step run on the split folders (the reference the other locations must match)."""
    ok("-q", *_train_args(*(str(moons / "split" / p) for p in ("labeled", "unlabeled", "val")), moons / "run-folders"))
    return moons / "run-folders/student.safetensors"


def test_brace_pattern_with_manifest_beside_it_keeps_checksums(run_cli, moons, student):
    code, out, err = run_cli("data", "info", f"{moons}/all/{THREE}", "--verify", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["num_samples"] == 120 and report["checksums"] and report["verified"]
    assert report["metadata"] == str(moons / "all/manifest.json") and report["has_manifest"]
    # Two shards of three: counts from the manifest, per-class counts unknown (not faked).
    code, out, _ = run_cli("data", "info", f"{moons}/all/shard-{{000000..000001}}.tar", "--json", "--verify")
    report = json.loads(out)
    assert report["num_samples"] == report["counted_samples"] == 80 and report["class_counts"] is None and report["verified"]
    folder = _eval(run_cli, student, str(moons / "all"))
    assert _eval(run_cli, student, f"{moons}/all/{THREE}") == folder


def test_manifest_less_pattern_for_info_split_eval_train(run_cli, moons, student, tmp_path):
    plain = moons / "plain"
    code, out, err = run_cli("data", "info", f"{plain}/all/{THREE}", "--verify", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["num_samples"] == report["counted_samples"] == 120 and report["verified"]
    assert report["checksums"] is False and "no checksums" in report["metadata"] and report["has_manifest"] is False
    code, out, _ = run_cli("data", "info", f"{plain}/all/{THREE}")
    assert "no checksums" in out
    # split: the same samples as the split of the folder with the manifest
    code, _, err = run_cli(
        "data",
        "split",
        f"{plain}/all/{THREE}",
        "--labeled-per-class",
        "5",
        "--val-per-class",
        "10",
        "--max-per-shard",
        "40",
        "--out",
        tmp_path / "split",
    )
    assert code == 0, err
    for part in ("labeled", "unlabeled", "val"):
        ours = json.loads((moons / "split" / part / "manifest.json").read_text())
        theirs = json.loads((tmp_path / "split" / part / "manifest.json").read_text())
        assert theirs["num_samples"] == ours["num_samples"] and theirs["class_counts"] == ours["class_counts"]
    assert _eval(run_cli, student, f"{plain}/all/{THREE}") == _eval(run_cli, student, str(moons / "all"))
    code, out, err = run_cli(
        *_train_args(
            f"{plain}/split/labeled/shard-000000.tar",
            f"{plain}/split/unlabeled/shard-{{000000..000002}}.tar",
            f"{plain}/split/val/shard-000000.tar",
            tmp_path / "run",
        )
    )
    assert code == 0, err
    assert (tmp_path / "run/student.safetensors").is_file()
    # filter-unlabeled: a scanned unlabelled set names no classes, so the checkpoint's are used
    code, out, err = run_cli(
        "data",
        "filter-unlabeled",
        f"{plain}/split/unlabeled/{THREE}",
        "--model",
        student,
        "--top-k",
        "3",
        "--out",
        tmp_path / "filtered",
        "--json",
    )
    assert code == 0, err
    code, _, err = run_cli(
        "data",
        "filter-unlabeled",
        moons / "split/unlabeled",
        "--model",
        student,
        "--top-k",
        "3",
        "--out",
        tmp_path / "filtered-folder",
    )
    assert code == 0, err
    kept, reference = (json.loads((tmp_path / f / "manifest.json").read_text()) for f in ("filtered", "filtered-folder"))
    assert kept["provenance"]["source"] == f"{plain}/split/unlabeled/{THREE}"
    assert kept["num_samples"] == reference["num_samples"] > 0 and kept["classes"] == reference["classes"]


@pytest.fixture(scope="module")
def served(moons):
    """`python -m http.server` serving the module's data folder on a free port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(moons)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(5)


def test_http_urls_for_eval_and_train(run_cli, moons, student, served, tmp_path):
    folder = _eval(run_cli, student, str(moons / "all"))
    assert _eval(run_cli, student, f"{served}/all/{THREE}") == folder  # manifest.json fetched from beside the shards
    code, _, err = run_cli(
        *_train_args(
            f"{served}/split/labeled/shard-000000.tar",
            f"{served}/split/unlabeled/{THREE}",
            f"{served}/split/val/shard-000000.tar",
            tmp_path / "run",
        )
    )
    assert code == 0, err
    # Remote shards without a manifest.json are refused before anything is written: counting them would mean
    # downloading the whole set before step 1. The message names the command that writes the manifest.
    code, _, err = run_cli(
        *_train_args(
            str(moons / "split/labeled"),
            f"{served}/plain/split/unlabeled/{THREE}",
            str(moons / "split/val"),
            tmp_path / "refused",
        )
    )
    assert code == 2 and f"there is no {served}/plain/split/unlabeled/manifest.json" in err, err
    assert f"mpl data manifest '{served}/plain/split/unlabeled/{THREE}'" in err and not (tmp_path / "refused").exists()
    code, _, err = run_cli("eval", student, "--data", f"{served}/all/shard-000009.tar")  # not in the manifest beside it
    assert code == 2 and f"{served}/all/manifest.json does not list shard-000009.tar" in err, err
    code, out, err = run_cli(
        "data",
        "import",
        "webdataset",
        f"{served}/plain/split/val/shard-000000.tar",
        "--classes",
        "upper,lower",
        "--out",
        tmp_path / "adopted",
    )
    assert code == 0, err
    adopted = json.loads((tmp_path / "adopted/manifest.json").read_text())
    assert adopted["provenance"]["source_shards"] == [f"{served}/plain/split/val/shard-000000.tar"]
    assert adopted["class_counts"] == json.loads((moons / "split/val/manifest.json").read_text())["class_counts"]
    # The manifest beside remote shards is checked: a changed shard is named by its URL.
    shutil.copytree(moons / "all", moons / "tampered")
    data = bytearray((moons / "tampered/shard-000001.tar").read_bytes())
    data[700] ^= 0x01  # inside the first member's payload
    (moons / "tampered/shard-000001.tar").write_bytes(bytes(data))
    code, _, err = run_cli("eval", student, "--data", f"{served}/tampered/{THREE}")
    assert code == 1 and f"{served}/tampered/shard-000001.tar: sha256" in err, err


def test_url_in_a_message_is_not_mangled(run_cli, monkeypatch):
    monkeypatch.setenv("MPL_FETCH_RETRIES", "1")  # a refused connection is retried (data/remote.py); once is enough here
    url = "https://127.0.0.1:9/data/shard-000000.tar"  # port 9 (discard): refused at once, no network needed
    code, _, err = run_cli("data", "info", url)
    assert code == 1 and "https://127.0.0.1:9/data/manifest.json: download failed" in err and "https:/127" not in err
    code, _, err = run_cli("data", "split", "s3://bucket/shard-000000.tar", "--labeled", "2", "--out", "x")
    assert code == 2 and "s3://bucket/shard-000000.tar: reading s3:// locations needs" in err
    assert "pip install 'meta-pseudo-labels[remote]'" in err
    code, _, err = run_cli("data", "info", "nosuch://bucket/shard-000000.tar")
    assert code == 2 and "the nosuch:// scheme is not supported" in err


def test_pipe_only_with_allow_pipe_on_the_command_line(run_cli, moons, student, tmp_path):
    pipe = f"pipe:cat {moons}/all/shard-{{000000..000002}}.tar"
    code, _, err = run_cli("data", "info", pipe)
    assert code == 2 and "--allow-pipe" in err
    code, out, err = run_cli("data", "info", pipe, "--allow-pipe", "--json")
    assert code == 0, err
    report = json.loads(out)  # the manifest is what `cat .../all/manifest.json` prints
    assert report["num_samples"] == 120 and report["checksums"] and report["metadata"] == f"pipe:cat {moons}/all/manifest.json"
    piped = json.loads(run_cli("--allow-pipe", "eval", student, "--data", pipe, "--json").stdout)
    assert piped.pop("data") == pipe and piped == _eval(run_cli, student, str(moons / "all"))
    # Typed with --set and the flag: accepted. From a recipe file: refused even with the flag.
    unlabeled = f"pipe:cat {moons}/split/unlabeled/{THREE}"
    code, _, err = run_cli(
        "--allow-pipe", *_train_args(str(moons / "split/labeled"), unlabeled, str(moons / "split/val"), tmp_path / "a")
    )
    assert code == 0, err
    # A scanned labelled set knows only label numbers; the mismatch with named classes says how to name them.
    labeled = f"pipe:cat {moons}/plain/split/labeled/shard-000000.tar"  # no manifest.json there: scanned
    code, _, err = run_cli(
        "--allow-pipe", *_train_args(labeled, str(moons / "split/unlabeled"), str(moons / "split/val"), tmp_path / "c")
    )
    assert code == 1 and "share one label set" in err and "--classes FILE" in err
    recipe = tmp_path / "r.toml"
    text = (
        (Path("recipes/tiny/twomoon.toml"))
        .read_text()
        .replace('labeled = "data/tiny/twomoon/split/labeled"', f'labeled = "{labeled}"')
    )
    recipe.write_text(text)
    code, _, err = run_cli(
        "--allow-pipe",
        "train",
        recipe,
        "--out",
        tmp_path / "b",
        *sets(f"data.unlabeled={moons}/split/unlabeled", f"data.val={moons}/split/val"),
    )
    assert code == 2 and "--allow-pipe" in err and "never from a recipe" in err
    # recipes validate makes the same check as train: the recipe's pipe is refused, the typed one accepted
    code, _, err = run_cli("--allow-pipe", "recipes", "validate", recipe, "--out", tmp_path / "v")
    assert code == 2 and "never from a recipe" in err and "data.labeled" in err
    code, _, err = run_cli(
        "--allow-pipe",
        "recipes",
        "validate",
        "recipes/tiny/twomoon.toml",
        "--out",
        tmp_path / "v",
        *sets(
            f"data.labeled={moons}/split/labeled", f"data.unlabeled={unlabeled}", f"data.val={moons}/split/val/shard-000000.tar"
        ),
    )
    assert code == 0, err
    code, _, err = run_cli("data", "info", "pipe:false")
    assert code == 2
    code, _, err = run_cli("--allow-pipe", "data", "info", "pipe:exit 3")
    assert code == 1 and "pipe:exit 3: the command exited with status 3" in err


# --- mpl data import webdataset --------------------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_wds(path: Path, samples: list[dict]) -> None:
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def test_import_webdataset_then_train_and_eval(run_cli, moons, tmp_path):
    code, out, err = run_cli(
        "data",
        "import",
        "webdataset",
        f"{moons}/plain/split/labeled/shard-000000.tar",
        "--classes",
        "upper,lower",
        "--out",
        tmp_path / "lab",
    )
    assert code == 0, err
    assert out.strip() == str(tmp_path / "lab")
    manifest = json.loads((tmp_path / "lab/manifest.json").read_text())
    ours = json.loads((moons / "split/labeled/manifest.json").read_text())
    for key in ("num_samples", "classes", "class_counts", "input", "labeled"):
        assert manifest[key] == ours[key], key
    assert [s["sha256"] for s in manifest["shards"]] == [sha256_file(tmp_path / "lab" / s["name"]) for s in manifest["shards"]]
    code, _, err = run_cli(
        "data",
        "import",
        "webdataset",
        f"{moons}/plain/split/val/shard-000000.tar",
        "--classes",
        "upper,lower",
        "--out",
        tmp_path / "val",
    )
    assert code == 0, err
    # Unlabelled shards adopted without --classes name no classes and fit any labelled set.
    code, _, err = run_cli(
        "data", "import", "webdataset", f"{moons}/plain/split/unlabeled/{THREE}", "--out", tmp_path / "unlabeled"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "unlabeled/manifest.json").read_text())["labeled"] is False
    code, _, err = run_cli("data", "import", "webdataset", f"{moons}/plain/split/val/shard-000000.tar", "--out", tmp_path / "val")
    assert code == 1 and "--force" in err  # no silent overwrite
    code, _, err = run_cli(
        *_train_args(str(tmp_path / "lab"), str(tmp_path / "unlabeled"), str(tmp_path / "val"), tmp_path / "run")
    )
    assert code == 0, err
    code, out, err = run_cli("eval", tmp_path / "run/student.safetensors", "--data", tmp_path / "val", "--json")
    assert code == 0, err
    assert json.loads(out)["num_samples"] == json.loads((tmp_path / "val/manifest.json").read_text())["num_samples"] == 20


def test_import_webdataset_images_with_named_labels(run_cli, tmp_path):
    rng = np.random.default_rng(0)
    samples = [
        {
            "__key__": f"im{i:03d}",
            "png": _png(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)),
            "label.txt": ["cat", "dog"][i % 2].encode(),
            "txt": b"a caption",
        }
        for i in range(6)
    ]
    _write_wds(tmp_path / "raw/a-000000.tar", samples[:4])
    _write_wds(tmp_path / "raw/a-000001.tar", samples[4:])
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    code, _, err = run_cli(
        "data",
        "import",
        "webdataset",
        f"{tmp_path}/raw/a-{{000000..000001}}.tar",
        "--classes",
        tmp_path / "classes.txt",
        "--out",
        tmp_path / "out",
    )
    assert code == 0, err
    assert ".txt (6×)" in err  # what was not carried over is said
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["classes"] == ["dog", "cat"] and manifest["class_counts"] == [3, 3]
    assert manifest["input"] == {"kind": "image", "encoding": "png", "shape": [6, 5, 3], "dtype": "uint8"}
    names = dict(_members(tmp_path / "out/shard-000000.tar"))
    assert names["im000.cls"] == b"1" and names["im001.cls"] == b"0" and names["im000.png"] == samples[0]["png"]
    # Opened directly (no import), labels outside `cls` are not guessed: the message says to import.
    code, _, err = run_cli("data", "info", f"{tmp_path}/raw/a-000000.tar")
    assert code == 1 and "a-000000.tar: sample 'im000' keeps its label in a 'label.txt' member" in err
    assert "mpl data import webdataset" in err
    # uint8 .npy images become png; integer labels in json
    _write_wds(
        tmp_path / "npy/b-000000.tar",
        [
            {"__key__": f"k{i}", "npy": _npy(np.full((4, 4), i, np.uint8)), "json": json.dumps({"label": i % 3}).encode()}
            for i in range(3)
        ],
    )
    code, _, err = run_cli("data", "import", "webdataset", tmp_path / "npy/b-000000.tar", "--out", tmp_path / "npyout")
    assert code == 0, err
    manifest = json.loads((tmp_path / "npyout/manifest.json").read_text())
    assert manifest["input"]["shape"] == [4, 4, 1] and manifest["classes"] == ["0", "1", "2"]
    code, _, err = run_cli("data", "info", tmp_path / "npyout", "--verify")
    assert code == 0, err


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_bad_webdataset_inputs_name_the_shard(run_cli, tmp_path):
    code, _, err = run_cli("data", "import", "webdataset", f"{tmp_path}/none/x-{{000000..000003}}.tar", "--out", tmp_path / "o")
    assert code == 1 and f"no shard matches {tmp_path}/none/x-{{000000..000003}}.tar" in err
    code, _, err = run_cli("data", "info", f"{tmp_path}/none/*.tar")
    assert code == 1 and "not expanded" in err
    code, _, err = run_cli("data", "import", "webdataset", "--out", tmp_path / "o")
    assert code == 2 and "brace pattern" in err
    rng = np.random.default_rng(1)
    img = lambda h: _png(rng.integers(0, 255, (h, 4, 3), dtype=np.uint8))  # noqa: E731
    _write_wds(tmp_path / "mixed/m-000000.tar", [{"__key__": "a", "png": img(4), "cls": b"0"}])
    _write_wds(
        tmp_path / "mixed/m-000001.tar",
        [{"__key__": "b", "png": img(4), "cls": b"1"}, {"__key__": "c", "png": img(5), "cls": b"0"}],
    )
    code, _, err = run_cli("data", "import", "webdataset", f"{tmp_path}/mixed/m-{{000000..000001}}.tar", "--out", tmp_path / "o")
    assert code == 1 and "m-000001.tar: sample 'c' has an input of shape (5, 4, 3)" in err and "sample 'a'" in err
    _write_wds(tmp_path / "nolab/n-000000.tar", [{"__key__": "a", "png": img(4), "cls": b"0"}, {"__key__": "b", "png": img(4)}])
    for args in (
        ("data", "import", "webdataset", tmp_path / "nolab/n-000000.tar", "--out", tmp_path / "o"),
        ("data", "info", tmp_path / "nolab/n-000000.tar"),
    ):
        code, _, err = run_cli(*args)
        assert code == 1 and "n-000000.tar: sample 'b' has no label" in err and "missing labels" in err, err
    code, _, err = run_cli(
        "data", "import", "webdataset", tmp_path / "nolab/n-000000.tar", "--classes", "only", "--out", tmp_path / "o"
    )
    assert code == 2 and "--classes" in err
    assert not (tmp_path / "o").exists()


def test_data_manifest_lets_remote_shards_stream(run_cli, moons, student, served, tmp_path):
    """`mpl data manifest` writes the manifest.json of plain remote shards (what `mpl data import` writes of the
    same samples, with these shards' checksums); uploaded beside them, the set streams with checksums."""
    shutil.copytree(moons / "plain/all", moons / "listed/all")
    url = f"{served}/listed/all/{THREE}"
    code, _, err = run_cli("eval", student, "--data", url)
    assert code == 2 and f"there is no {served}/listed/all/manifest.json" in err and "mpl data manifest" in err
    # Written where the server serves it ("uploaded"); stdout names the file.
    target = moons / "listed/all/manifest.json"
    code, out, err = run_cli("data", "manifest", url, "--classes", "upper,lower", "--out", target)
    assert code == 0, err
    assert out.strip() == str(target) and f"put it at {served}/listed/all/manifest.json" in err
    written, imported = (json.loads(p.read_text()) for p in (target, moons / "all/manifest.json"))
    # The same description as `mpl data import`'s manifest of the original shards (the plain copies are other bytes).
    assert {k: v for k, v in written.items() if k not in ("provenance", "shards")} == {
        k: v for k, v in imported.items() if k not in ("provenance", "shards")
    }
    assert [(s["name"], s["count"]) for s in written["shards"]] == [(s["name"], s["count"]) for s in imported["shards"]]
    assert written["provenance"]["source_pattern"] == url
    assert [(s["sha256"], s["bytes"]) for s in written["shards"]] == [
        (sha256_file(p), p.stat().st_size) for p in sorted((moons / "listed/all").glob("shard-*.tar"))
    ]
    folder = _eval(run_cli, student, str(moons / "all"))
    assert _eval(run_cli, student, url) == folder
    assert _eval(run_cli, student, f"{served}/listed/all/") == folder  # the folder URL reads the manifest's list
    code, out, err = run_cli("data", "info", url, "--json")
    assert (
        code == 0 and json.loads(out)["checksums"] is True and json.loads(out)["metadata"].endswith("/listed/all/manifest.json")
    )
    # The checksums it wrote are checked: a shard changed afterwards is refused, named by its URL.
    data = bytearray((moons / "listed/all/shard-000002.tar").read_bytes())
    data[700] ^= 0x01
    (moons / "listed/all/shard-000002.tar").write_bytes(bytes(data))
    code, _, err = run_cli("eval", student, "--data", url)
    assert code == 1 and f"{served}/listed/all/shard-000002.tar: sha256" in err, err


def test_data_manifest_on_stdout_and_its_faults(run_cli, moons, served, tmp_path):
    local = f"{moons}/plain/all/{THREE}"
    code, out, err = run_cli("data", "manifest", local)
    assert code == 0, err
    printed = json.loads(out)
    assert printed["classes"] == ["0", "1"] and printed["classes_unknown"] is True  # integer labels, no --classes
    assert printed["class_counts"] == json.loads((moons / "all/manifest.json").read_text())["class_counts"]
    assert printed["num_samples"] == 120 and [s["name"] for s in printed["shards"]] == [f"shard-00000{i}.tar" for i in range(3)]
    code, out, _ = run_cli("data", "manifest", local, "--json")
    report = json.loads(out)
    assert report["manifest"].pop("provenance")["command"].endswith("--json")
    assert (
        report["manifest"] == {k: v for k, v in printed.items() if k != "provenance"}
        and report["place_at"] == f"{moons}/plain/all/manifest.json"
    )
    assert report["bytes"] == sum(p.stat().st_size for p in (moons / "plain/all").glob("shard-*.tar"))
    # Faults: exit codes and messages; nothing is written.
    out_file = tmp_path / "m.json"
    cases = [
        ((f"{served}/plain/all/",), 2, "is a folder: name its shards with a brace pattern"),
        ((str(moons / "plain/all"),), 2, "is a folder (it holds 3 .tar file(s), shard-000000.tar .. shard-000002.tar)"),
        ((f"pipe:cat {local} {moons}/plain/all/shard-000000.tar", "--allow-pipe"), 2, "must differ only in that name"),
        (
            (f"{served}/plain/all/shard-{{000000..000003}}.tar",),
            1,
            f"{served}/plain/all/shard-000003.tar: download failed (HTTP 404",
        ),
        ((f"{moons}/plain/{{all,split/val}}/shard-000000.tar",), 2, "the shards are in 2 folders"),
        ((local, "--classes", "a"), 2, "--classes names 1 class(es)"),
    ]
    for args, want_code, want in cases:
        code, _, err = run_cli("data", "manifest", *args, "--out", out_file)
        assert code == want_code and want in err, (args, err)
        assert not out_file.exists() and not list(tmp_path.iterdir()), args
    out_file.write_text("keep")
    code, _, err = run_cli("data", "manifest", local, "--out", out_file)
    assert code == 1 and "already exists; pass --force" in err and out_file.read_text() == "keep"
    # Labels kept outside `cls` are not what mpltools reads in place: the message points to the import that rewrites them.
    import webdataset as wds

    (tmp_path / "json").mkdir()
    with wds.TarWriter(str(tmp_path / "json/shard-000000.tar")) as sink:
        sink.write({"__key__": "a", "npy": np.zeros(2, np.float32), "json": {"label": 1}})
    code, _, err = run_cli("data", "manifest", str(tmp_path / "json/shard-000000.tar"), "--out", tmp_path / "json/manifest.json")
    assert code == 1 and "mpl data import webdataset" in err and not (tmp_path / "json/manifest.json").exists()


def test_pipe_shards_find_their_manifest_through_the_same_command(run_cli, moons, student, tmp_path):
    """`pipe:CMD` shards: the manifest is what CMD prints with the shard's file name replaced by manifest.json; without
    one they are scanned (no checksums); `mpl data manifest` writes it for them too; its checksums are then checked."""
    plain = f"pipe:cat {moons}/plain/all/{THREE}"
    code, out, err = run_cli("--allow-pipe", "data", "info", plain, "--json")
    assert code == 0 and json.loads(out)["checksums"] is False and json.loads(out)["num_samples"] == 120, err
    shutil.copytree(moons / "plain/all", tmp_path / "piped")
    piped = f"pipe:cat {tmp_path}/piped/{THREE}"
    code, _, err = run_cli(
        "--allow-pipe", "data", "manifest", piped, "--classes", "upper,lower", "--out", tmp_path / "piped/manifest.json"
    )
    assert code == 0 and f"where `cat {tmp_path}/piped/manifest.json` prints it" in err, err
    code, out, err = run_cli("--allow-pipe", "data", "info", piped, "--json")
    report = json.loads(out)
    assert (
        report["checksums"]
        and report["metadata"] == f"pipe:cat {tmp_path}/piped/manifest.json"
        and report["classes"] == ["upper", "lower"]
    )
    evaluated = json.loads(run_cli("--allow-pipe", "eval", student, "--data", piped, "--json").stdout)
    assert evaluated.pop("data") == piped and evaluated == _eval(run_cli, student, str(moons / "all"))
    data = bytearray((tmp_path / "piped/shard-000001.tar").read_bytes())
    data[700] ^= 0x01
    (tmp_path / "piped/shard-000001.tar").write_bytes(bytes(data))
    code, _, err = run_cli("--allow-pipe", "eval", student, "--data", piped)
    assert code == 1 and f"pipe:cat {tmp_path}/piped/shard-000001.tar: sha256" in err, err
    # The command is derived only where it is unambiguous: here the shard's name is not the last NAME.tar.
    from mpltools.data.locations import pipe_manifest_command

    assert pipe_manifest_command(["pipe:cat a/s-0.tar", "pipe:cat a/s-1.tar"]) == "pipe:cat a/manifest.json"
    assert pipe_manifest_command(["pipe:curl -s https://h/s/x-0.tar | head", "pipe:curl -s https://h/s/x-1.tar | head"]) == (
        "pipe:curl -s https://h/s/manifest.json | head"
    )
    assert pipe_manifest_command(["pipe:cat s-0.tar b.tar", "pipe:cat s-1.tar b.tar"]) is None
    assert pipe_manifest_command(["pipe:cat s-0.tar s-0.tar"]) is None and pipe_manifest_command(["pipe:cat x"]) is None

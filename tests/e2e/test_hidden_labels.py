"""`mpl data split --keep-hidden-labels`: unlabeled/'s true labels in a side file, outside every shard set."""

from __future__ import annotations

import json

import pytest

from mpltools.data.hidden_labels import HIDDEN_LABELS, read_hidden_labels
from mpltools.data.opening import open_shard_set
from mpltools.errors import MplError


def _split(run_cli, src, out, *extra):
    code, _, err = run_cli(
        "data", "split", src, "--out", out, "--labeled-per-class", "3", "--val-per-class", "2", "--seed", "0", *extra
    )
    assert code == 0, err


def test_side_file_holds_the_true_labels_and_shards_are_unchanged(run_cli, tmp_path):
    code, _, err = run_cli("data", "import", "synthetic", "--num-samples", "120", "--image-size", "8", "--out", tmp_path / "all")
    assert code == 0, err
    truth = {s.key: s.label for s in open_shard_set(tmp_path / "all").samples()}
    _split(run_cli, tmp_path / "all", tmp_path / "plain")
    _split(run_cli, tmp_path / "all", tmp_path / "kept", "--keep-hidden-labels")
    assert not (tmp_path / "plain" / HIDDEN_LABELS).exists()
    classes = open_shard_set(tmp_path / "all").classes
    hidden = read_hidden_labels(tmp_path / "kept" / HIDDEN_LABELS, classes)
    unlabeled = open_shard_set(tmp_path / "kept/unlabeled")
    keys = [s.key for s in unlabeled.samples()]
    assert sorted(hidden) == sorted(keys) and len(keys) == 120 - 50
    assert all(hidden[k] == truth[k] for k in keys)
    assert all(s.label is None for s in unlabeled.samples())  # the shards themselves stay unlabelled
    for part in ("labeled", "unlabeled", "val"):  # the side file changes nothing else
        assert (tmp_path / "plain" / part / "manifest.json").read_bytes() != b""
        a = sorted(p.name for p in (tmp_path / "plain" / part).iterdir())
        assert a == sorted(p.name for p in (tmp_path / "kept" / part).iterdir())
        for name in a:
            if name.endswith(".tar"):
                assert (tmp_path / "plain" / part / name).read_bytes() == (tmp_path / "kept" / part / name).read_bytes()
    with pytest.raises(MplError, match="not the run's"):
        read_hidden_labels(tmp_path / "kept" / HIDDEN_LABELS, ["a", "b"])
    (tmp_path / "bad.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(MplError, match="bad.json is not a hidden-labels file"):
        read_hidden_labels(tmp_path / "bad.json", classes)


def test_training_is_identical_with_and_without_the_side_file(run_cli, tmp_path):
    import shutil

    from mpltools.data.hidden_labels import HIDDEN_LABELS

    code, _, err = run_cli("data", "import", "digits", "--out", tmp_path / "all")
    assert code == 0, err
    _split(run_cli, tmp_path / "all", tmp_path / "kept", "--keep-hidden-labels")
    shutil.copytree(tmp_path / "kept", tmp_path / "plain")
    (tmp_path / "plain" / HIDDEN_LABELS).unlink()
    rows = {}
    for name in ("kept", "plain"):
        sets = [f"data.{p}={tmp_path / name / p}" for p in ("labeled", "unlabeled", "val")]
        args = [a for s in sets for a in ("--set", s)]
        code, _, err = run_cli(
            "train",
            "recipes/tiny/digits.toml",
            "--out",
            tmp_path / f"run-{name}",
            "--force",
            "--set",
            "schedule.steps=6",
            "--set",
            "runtime.log_every=2",
            *args,
        )
        assert code == 0, err
        lines = (tmp_path / f"run-{name}" / "metrics.jsonl").read_text().splitlines()
        rows[name] = [json.loads(line) for line in lines]
    kept = [r for r in rows["kept"] if "diag/pl_accuracy" in r]
    assert kept and all(0.0 <= r["diag/pl_accuracy"] <= 1.0 for r in kept)
    assert not any("diag/pl_accuracy" in r for r in rows["plain"])

    def strip(r):
        return {k: v for k, v in r.items() if k != "diag/pl_accuracy" and not any(t in k for t in ("time", "per_s", "wait"))}  # noqa: E731

    assert [strip(r) for r in rows["kept"]] == [strip(r) for r in rows["plain"]]
    from safetensors.numpy import load_file

    a, b = (load_file(tmp_path / f"run-{n}" / "student.safetensors") for n in ("kept", "plain"))  # metadata names the paths
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_window_stats_reach_metrics_jsonl(run_cli, tmp_path):
    code, _, err = run_cli("data", "import", "digits", "--out", tmp_path / "all")
    assert code == 0, err
    _split(run_cli, tmp_path / "all", tmp_path / "s")
    sets = [a for p in ("labeled", "unlabeled", "val") for a in ("--set", f"data.{p}={tmp_path / 's' / p}")]
    code, _, err = run_cli(
        "train",
        "recipes/tiny/digits.toml",
        "--out",
        tmp_path / "run",
        "--set",
        "schedule.steps=6",
        "--set",
        "runtime.log_every=3",
        *sets,
    )
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "diag/h_mean" in r]
    assert len(logged) == 2
    for r in logged:
        assert r["diag/h_abs_median"] >= 0 and 0 <= r["diag/h_pos_frac"] <= 1

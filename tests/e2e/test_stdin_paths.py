"""`-` in place of a checkpoint or shard-set path reads the path from stdin, in every command that takes one (one
test per command; `data info`, `filter-unlabeled` PATH/--model and `plot regions` CHECKPOINTS have their own).
Each test gives the path once on the command line and once on stdin, and gets the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpltools.cli import app
from tests.e2e.helpers import REPO


def _cli(*args, input: str | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _ok(*args, input: str | None = None) -> str:
    result = _cli(*args, input=input)
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """TwoMoon points, a split of them, and a 2-step MPL run (its student is the checkpoint)."""
    root = tmp_path_factory.mktemp("stdin")
    _ok("data", "import", "twomoon", "--num-samples", "120", "--scale", "20", "--out", root / "all")
    _ok("data", "split", root / "all", "--labeled-per-class", "4", "--val-per-class", "10", "--out", root / "split")
    _ok(
        "train",
        REPO / "recipes/tiny/twomoon.toml",
        *("--set", "schedule.steps=2", "--set", "checkpoint.every=2"),
        *("--set", f"data.labeled={root}/split/labeled", "--set", f"data.unlabeled={root}/split/unlabeled"),
        *("--set", f"data.val={root}/split/val"),
        "--out",
        root / "run",
        "-q",
    )
    return root


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_eval_data(work):
    ckpt, val = work / "run/student.safetensors", f"{work}/split/val"
    given = _ok("eval", ckpt, "--data", val, "--json")
    assert _ok("eval", ckpt, "--data", "-", "--json", input=f"{val}\n") == given
    assert json.loads(given)["data"] == val


def test_data_split_source(work):
    args = ("--labeled-per-class", "2", "--val-per-class", "5")
    _ok("data", "split", work / "all", *args, "--out", work / "split_a")
    printed = _ok("data", "split", "-", *args, "--out", work / "split_b", input=f"{work}/all\n")
    assert printed.split() == [str(work / "split_b" / part) for part in ("labeled", "unlabeled", "val")]
    for part in ("labeled", "unlabeled", "val"):
        a, b = _manifest(work / "split_a" / part), _manifest(work / "split_b" / part)
        assert a["provenance"]["source"] == b["provenance"]["source"] == f"{work}/all"
        assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]], part


def test_finetune_labeled_and_val(work):
    ckpt = work / "run/student.safetensors"
    labeled, val = f"{work}/split/labeled", f"{work}/split/val"
    steps = ("--set", "finetune.steps=2", "--set", "finetune.batch_size=4")
    _ok("finetune", ckpt, "--labeled", labeled, "--val", val, *steps, "--out", work / "ft_a", "-q")
    printed = _ok(
        "finetune", ckpt, "--labeled", "-", "--val", "-", *steps, "--out", work / "ft_b", "-q", input=f"{labeled}\n{val}\n"
    )
    assert printed.strip() == str(work / "ft_b" / "finetuned.safetensors")
    a, b = ((work / d / "finetuned.safetensors").read_bytes() for d in ("ft_a", "ft_b"))
    assert a == b  # the same data, the same bytes


def test_reduced_predict_data(work):
    ckpt, data = work / "run/student.safetensors", f"{work}/split/labeled"
    _ok("reduced", "predict", ckpt, "--data", data, "--out", work / "pred_a", "-q")
    report = json.loads(
        _ok("reduced", "predict", ckpt, "--data", "-", "--out", work / "pred_b", "--json", "-q", input=f"{data}\n")
    )
    assert report["out"] == str(work / "pred_b")
    a, b = _manifest(work / "pred_a"), _manifest(work / "pred_b")
    assert a["provenance"]["source"] == b["provenance"]["source"] == data
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_filter_unlabeled_exclude(work):
    ckpt, pool = work / "run/student.safetensors", f"{work}/split/unlabeled"
    args = ("filter-unlabeled", pool, "--model", ckpt, "--top-k", "5", "--json")
    given = json.loads(_ok("data", *args, "--exclude", f"{work}/all", "--out", work / "filt_a"))
    read = json.loads(_ok("data", *args, "--exclude", "-", "--out", work / "filt_b", input=f"{work}/all\n"))
    assert given["duplicates_dropped"] == read["duplicates_dropped"]
    assert read["duplicates_dropped"]["exact"] > 0  # the pool is part of the excluded set: the path arrived


def test_plot_regions_data_and_labeled(work):
    ckpt, data, labeled = work / "run/student.safetensors", f"{work}/all", f"{work}/split/labeled"
    args = ("plot", "regions", ckpt, "--resolution", "10")
    _ok(*args, "--data", data, "--labeled", labeled, "--out", work / "a.png")
    printed = _ok(*args, "--data", "-", "--labeled", "-", "--out", work / "b.png", input=f"{data}\n{labeled}\n")
    assert printed.strip() == str(work / "b.png")
    assert (work / "a.png").read_bytes() == (work / "b.png").read_bytes()


def test_several_dashes_read_options_in_order_then_arguments(work):
    """`mpl eval - --data -`: the option's `-` is read first (the documented order), then the argument's."""
    val = f"{work}/split/val"
    read = json.loads(_ok("eval", "-", "--data", "-", "--json", input=f"{val}\n{work}/run/student.safetensors\n"))
    assert (read["data"], read["checkpoint"]) == (val, f"{work}/run/student.safetensors")


def test_dash_with_empty_stdin_is_a_usage_error_before_any_work(work):
    result = _cli("data", "split", "-", "--labeled-per-class", "2", "--out", work / "never", input="")
    assert result.exit_code == 2 and result.stdout == ""
    assert "expected a path on stdin (because '-' was given), but stdin was empty." in result.stderr
    assert not (work / "never").exists()


def test_data_manifest_pattern(work):
    pattern = f"{work}/all/shard-000000.tar"
    given = json.loads(_ok("data", "manifest", pattern))
    read = json.loads(_ok("data", "manifest", "-", input=f"{pattern}\n"))
    assert read["provenance"]["source_pattern"] == pattern
    assert {k: v for k, v in read.items() if k != "provenance"} == {k: v for k, v in given.items() if k != "provenance"}
    assert given["num_samples"] == 120

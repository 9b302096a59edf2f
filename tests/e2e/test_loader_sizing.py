"""Loader sizing through `mpl train`: the workers split between the streams, the memory estimate on
stderr at start, and the refusal (exit 2, naming the key, nothing written) of loaders that cannot fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpltools.data import sizing
from tests.e2e.helpers import ok

RECIPE = """
[data]
labeled = "split/labeled"
unlabeled = "split/unlabeled"
batch_size = 4
unlabeled_ratio = 7
workers = {workers}
in_memory = "no"
shuffle_buffer = 50
[augment]
kind = "cifar"
[model]
name = "small_cnn"
kwargs = {{ width = 4 }}
[schedule]
steps = 3
[runtime]
log_every = 1
threads = 1
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sizing")
    ok("data", "import", "synthetic", "--num-samples", "120", "--image-size", "8", "--out", root / "all")
    ok(
        "data",
        "split",
        root / "all",
        "--labeled-per-class",
        "4",
        "--val-per-class",
        "0",
        "--max-per-shard",
        "20",
        "--out",
        root / "split",
    )
    return root


@pytest.mark.parametrize(
    "total,mu,expected",
    [(8, 7, (1, 7)), (16, 8, (1, 15)), (3, 7, (1, 2)), (2, 7, (1, 1)), (1, 7, (0, 1)), (0, 7, (0, 0)), (40, 1, (11, 29))],
)
def test_workers_are_split_by_the_streams_work(total, mu, expected):
    assert sizing.split_workers(total, mu, two_streams=True) == expected
    assert sizing.split_workers(total, mu, two_streams=False) == (total, 0)


def test_prefetch_is_bounded_in_bytes_with_one_batch_per_worker_as_the_floor():
    mb = 1 << 20
    assert sizing.prefetch_factor(1024 * mb, [(1, mb), (7, 10 * mb)]) == 4
    assert sizing.prefetch_factor(160 * mb, [(1, mb), (7, 10 * mb)]) == 2  # 71 MB per round of queued batches
    assert sizing.prefetch_factor(10 * mb, [(1, mb), (7, 10 * mb)]) == 1
    p = sizing.plan(
        labeled_batch=1024,
        unlabeled_batch=15360,
        two_streams=True,
        workers=16,
        unlabeled_ratio=15,
        view_bytes=3 * 224 * 224,
        extra_bytes=0,
        in_memory=False,
        augmented=True,
        shuffle_buffer=2000,
        encoded_bytes=(110_000, 110_000),
        decoded_bytes=0,
        prefetch_mb=1024,
    )
    unl = p.stream("unlabelled")
    assert (p.stream("labelled").workers, unl.workers, unl.prefetch) == (1, 15, 1) and p.over_prefetch_budget
    assert unl.batch_bytes == 15360 * 2 * 3 * 224 * 224 and p.total > 15 * 3 * unl.batch_bytes  # queued + assembling


@pytest.mark.slow
def test_train_prints_the_plan_and_runs_with_split_workers(data, run_cli, monkeypatch):
    monkeypatch.chdir(data)
    Path("r.toml").write_text(RECIPE.format(workers=3))
    r = run_cli("train", "r.toml", "--out", "run", "--json")
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())  # the console wraps long lines
    assert "labelled: 1 worker(s)" in err and "unlabelled: 2 worker(s), 4 queued batch(es) each" in err
    assert "estimated loader memory per process" in err
    assert json.loads(r.stdout)["step"] == 3

    from mpltools.config import load_recipe
    from mpltools.train_data import make_streams, open_data

    recipe = load_recipe("r.toml", ["data.prefetch_mb=1"])  # 1 MB: the 2 x 2 queued unlabelled batches of 10 KB fit 4 deep
    labeled, unlabeled = make_streams(open_data(recipe, True), recipe, 0, 1, 0, True)
    assert (labeled.workers, unlabeled.workers, unlabeled.prefetch) == (1, 2, 4)
    recipe = load_recipe("r.toml", ["data.workers=1"])
    labeled, unlabeled = make_streams(open_data(recipe, True), recipe, 0, 1, 0, True)
    assert (labeled.workers, unlabeled.workers) == (0, 1)


@pytest.mark.slow
def test_loaders_that_cannot_fit_are_refused_before_anything_is_written(data, run_cli, monkeypatch):
    monkeypatch.chdir(data)
    Path("r.toml").write_text(RECIPE.format(workers=2))
    monkeypatch.setattr(sizing, "machine_memory", lambda: 1 << 20)  # a 1 MB machine
    r = run_cli("train", "r.toml", "--out", "refused")
    assert r.exit_code == 2
    err = " ".join(r.stderr.split())
    assert "more than the 1.0 MB of memory this machine has" in err and "lower data.workers" in err
    assert not Path("refused").exists()
    monkeypatch.setattr(sizing, "machine_memory", lambda: 1 << 40)
    assert run_cli("train", "r.toml", "--out", "refused", "--set", "schedule.steps=1").exit_code == 0

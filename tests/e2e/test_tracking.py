"""Trackers through Accelerate (mpltools/tracking.py): TensorBoard's event file holds what metrics.jsonl holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpltools import tracking
from mpltools.errors import MplError
from tests.e2e.helpers import metrics, mpl, replay, sets

TWOMOON = "recipes/tiny/twomoon.toml"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tracking")
    replay(TWOMOON, root, only="mpl data")
    return root


def scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("setting", ['runtime.trackers=["tensorboard"]', "runtime.tensorboard=true"])
def test_tensorboard_event_file_equals_metrics_jsonl(work, setting):
    pytest.importorskip("tensorboard")
    out = work / f"runs/{'alias' if 'true' in setting else 'list'}"
    r = mpl(
        "train",
        TWOMOON,
        "--out",
        out,
        "--force",
        *sets("schedule.steps=20", "runtime.log_every=5"),
        "--set",
        setting,
        cwd=work,
    )
    if "true" in setting:
        assert "deprecated" in r.stderr
    logged = scalars(out / "tensorboard")
    records = [rec for rec in metrics(out) if "final" not in rec]
    expected: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        for k, v in rec.items():
            if isinstance(v, float):
                expected.setdefault(k, []).append((rec["step"], v))
    assert [rec["step"] for rec in records] == [5, 10, 15, 20]
    assert set(logged) == set(expected) and "throughput/images_per_s" in logged
    # the feedback diagnostics reach TensorBoard as scalars; the pseudo-label class histogram is not a scalar and is
    # carried by its summaries (diag/pl_entropy_norm, diag/pl_max_class_fraction), in metrics.jsonl as here
    assert {
        "diag/h_mean",
        "diag/h_abs_median",
        "diag/h_pos_frac",
        "diag/t_grad_norm_sup",
        "diag/t_grad_norm_uda",
        "diag/t_grad_norm_mpl",
        "diag/cos_mpl_aux",
        "diag/pl_entropy_norm",
        "diag/pl_max_class_fraction",
        "diag/pl_agreement",
    } <= set(logged)
    assert [s for s, _ in logged["diag/t_grad_norm_mpl"]] == [5, 10, 15, 20]
    assert not any(tag.startswith("hist/") for tag in logged)
    for tag, points in expected.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in points], tag
        assert [v for _, v in logged[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12), tag  # float32 in events


def test_missing_tracker_package_fails_before_the_run_folder(work, monkeypatch):
    out = work / "runs/missing"
    r = mpl("train", TWOMOON, "--out", out, "--set", 'runtime.trackers=["tensorboard", "nosuch"]', cwd=work, check=False)
    assert r.returncode == 2 and "unknown tracker 'nosuch'" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MplError, match=r"pip install 'meta-pseudo-labels\[wandb\]'") as exc:
        tracking.check(["wandb"])
    assert exc.value.exit_code == 2

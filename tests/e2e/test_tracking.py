"""Trackers through Accelerate (mpltools/tracking.py): TensorBoard's event file holds what metrics.jsonl holds."""

from __future__ import annotations

import importlib.machinery
import sys
import types
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
    records = metrics(out)
    expected: dict[str, list[tuple[int, float]]] = {}
    for rec in records:
        for k, v in rec.items():
            if isinstance(v, float):
                expected.setdefault(k, []).append((rec["step"], v))
    assert [rec["step"] for rec in records if "final" not in rec] == [5, 10, 15, 20]
    assert set(logged) == set(expected) and "throughput/images_per_s" in logged
    # the final validation (TwoMoon validates at the end only) reaches the tracker too, at the last step
    final = records[-1]
    assert final["final"] is True and {"val/student_top1", "val/teacher_top1", "val/student_loss"} <= set(final)
    assert logged["val/student_top1"] == [(20, pytest.approx(final["val/student_top1"], rel=1e-6))]
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


def test_rerunning_a_finished_run_adds_no_event_file_and_no_rate(work):
    pytest.importorskip("tensorboard")
    out = work / "runs/rerun"
    args = ("train", TWOMOON, "--out", out, "--set", "schedule.steps=10", "--set", 'runtime.trackers=["tensorboard"]')
    mpl(*args, "--force", cwd=work)
    events = sorted((out / "tensorboard").rglob("events.out.tfevents.*"))
    before = metrics(out)
    r = mpl(*args, cwd=work)
    assert sorted((out / "tensorboard").rglob("events.out.tfevents.*")) == events and len(events) == 1
    assert "0.0 steps/s" not in r.stderr and "-:--:--" not in r.stderr, r.stderr
    assert "train mpl: 10/10 (100%), nothing left to do" in r.stderr
    assert metrics(out) == before  # the final record is written again, once


class FakeWandb(types.ModuleType):
    """What accelerate's WandBTracker calls of the `wandb` package, recorded (wandb is not installed here)."""

    def __init__(self):
        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # so importlib.util.find_spec finds it
        self.inits, self.logged, self.configs, self.finished = [], [], [], 0
        self.config = types.SimpleNamespace(update=lambda values, allow_val_change=False: self.configs.append(values))

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda values, step=None: self.logged.append((step, values)), finish=self._finish)

    def _finish(self):
        self.finished += 1


RECIPE_SETS = [
    "--set",
    "runtime.tracker_project=from-recipe",
    "--set",
    "runtime.tracker_entity=team",
    "--set",
    "runtime.tracker_run_name=first-try",
    "--set",
    'runtime.tracker_tags=["mpl", "twomoon"]',
]
ENVIRONMENT = {"WANDB_PROJECT": "from-env", "WANDB_ENTITY": "env-team", "WANDB_NAME": "env-name", "WANDB_TAGS": "a, b"}


@pytest.mark.parametrize(
    "sets, environ, expected",
    [
        ([], {}, {"project": "mpltools", "name": "wb"}),  # never the run folder's name as the project
        ([], ENVIRONMENT, {"project": "from-env", "entity": "env-team", "name": "env-name", "tags": ["a", "b"]}),
        (
            RECIPE_SETS,
            ENVIRONMENT,
            {"project": "from-recipe", "entity": "team", "name": "first-try", "tags": ["mpl", "twomoon"]},
        ),
    ],
    ids=["defaults", "environment", "recipe-over-environment"],
)
def test_wandb_project_entity_name_and_tags_come_from_the_recipe_or_the_environment(
    run_cli, work, monkeypatch, sets, environ, expected
):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(work)
    args = ["--set", "schedule.steps=10", "--set", "runtime.log_every=5", "--set", 'runtime.trackers=["wandb"]', *sets]
    r = run_cli("-q", "train", TWOMOON, "--out", "runs/wb", "--force", *args)
    assert r.exit_code == 0, r.stderr
    assert fake.inits == [expected]
    assert fake.configs and fake.configs[0]["runtime.trackers"] == "['wandb']" and fake.finished == 1
    assert [step for step, _ in fake.logged] == [5, 10, 10]  # two logging steps, then the final validation
    assert fake.logged[-1][1] == {k: v for k, v in metrics(work / "runs/wb")[-1].items() if isinstance(v, float)}
    assert "val/student_top1" in fake.logged[-1][1]
    # the tracker's settings may change when the run is resumed (they do not change the maths)
    r = run_cli("-q", "train", TWOMOON, "--out", "runs/wb", *args, "--set", "runtime.tracker_run_name=renamed")
    assert r.exit_code == 0, r.stderr


def test_mlflow_settings_follow_the_same_rule():
    runtime = {"tracker_project": "", "tracker_run_name": "", "tracker_tags": []}
    env = {"MLFLOW_EXPERIMENT_NAME": "exp", "WANDB_TAGS": "a"}
    assert tracking.settings(runtime, Path("runs/x"), env)["mlflow"] == {
        "experiment_name": "exp",
        "run_name": "x",
        "tags": {"a": ""},
    }
    runtime = {"tracker_project": "p", "tracker_run_name": "n", "tracker_tags": ["t"]}
    assert tracking.settings(runtime, Path("runs/x"), env)["mlflow"] == {
        "experiment_name": "p",
        "run_name": "n",
        "tags": {"t": ""},
    }

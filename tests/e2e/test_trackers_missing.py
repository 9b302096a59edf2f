"""Trackers whose package is absent (wandb, mlflow are not in the test venv) fail a run at once, with exit 2,
the extra to install, and nothing written; `mpl recipes validate` reports the same before any run."""

from __future__ import annotations

import importlib.util

import pytest

from tests.e2e.helpers import REPO, mpl

TWOMOON = "recipes/tiny/twomoon.toml"


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_absent_tracker_package_exits_2_naming_the_extra_before_the_run_folder(tmp_path, name):
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here; this test needs it absent")
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    out = tmp_path / "runs/t"
    setting = f'runtime.trackers=["{name}"]'
    r = mpl("train", TWOMOON, "--out", out, "--set", setting, cwd=tmp_path, check=False)
    assert r.returncode == 2, r.stderr
    assert f"pip install 'meta-pseudo-labels[{name}]'" in r.stderr and "runtime.trackers" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists() and not (tmp_path / "runs").exists()
    v = mpl("recipes", "validate", TWOMOON, "--set", setting, cwd=tmp_path, check=False)
    assert v.returncode == 2 and f"meta-pseudo-labels[{name}]" in v.stderr and TWOMOON in v.stderr, v.stderr


def test_unknown_tracker_in_recipes_validate_exits_2_naming_the_key(tmp_path):
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    r = mpl("recipes", "validate", TWOMOON, "--set", 'runtime.trackers=["tensorbored"]', cwd=tmp_path, check=False)
    assert r.returncode == 2 and "runtime.trackers" in r.stderr and "'tensorbored'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

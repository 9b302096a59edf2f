"""A kill at the start or the end of a run leaves a folder that resumes, and the end of a
run is idempotent (re-running a finished run adds no second final record; export temps are cleaned)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import TWOMOON, cli, metrics, ok, sets, twomoon_split


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("kill")
    split = twomoon_split(root)
    return sets(
        f"data.labeled={split / 'labeled'}",
        f"data.val={split / 'val'}",
        "method.name=supervised",
        "schedule.steps=2",
        "eval.every=0",
    )


def finals(run: Path) -> list[dict]:
    return [r for r in metrics(run) if r.get("final")]


def test_rerunning_a_finished_run_is_idempotent_and_cleans_export_temps(base, tmp_path):
    run = tmp_path / "run"
    ok("train", TWOMOON, *base, "--out", run)
    assert len(finals(run)) == 1
    stale = run / ".student.safetensors.tmp-killed"  # a kill during export
    stale.write_bytes(b"half a checkpoint")
    ok("train", TWOMOON, *base, "--out", run)
    assert len(finals(run)) == 1, "a second final metrics record was appended"
    assert not stale.exists() and not list(run.glob(".*.tmp-*"))
    assert len(json.loads((run / "run.json").read_text())) == 2


@pytest.mark.parametrize("content", [b"", b'[\n {"command": "mpl tr'])
def test_an_empty_or_partial_run_json_resumes(base, tmp_path, content):
    run = tmp_path / "run"
    ok("train", TWOMOON, *base, "--out", run)
    (run / "run.json").write_bytes(content)
    code, text = cli("train", TWOMOON, *base, "--out", run)
    assert code == 0 and "Traceback" not in text, text[-2000:]
    assert isinstance(json.loads((run / "run.json").read_text()), list)
    assert len(finals(run)) == 1


def test_a_partial_recipe_toml_before_the_first_state_starts_the_run(base, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text('[data]\nlabeled = "/trunc')  # killed while the run folder was made
    ok("train", TWOMOON, *base, "--out", run)
    assert (run / "student.safetensors").is_file() and len(finals(run)) == 1


def test_a_partial_recipe_toml_next_to_states_is_a_clear_error(base, tmp_path):
    run = tmp_path / "run"
    ok("train", TWOMOON, *base, "--out", run)
    (run / "recipe.toml").write_text('[data]\nlabeled = "/trunc')
    before = (run / "student.safetensors").read_bytes()
    code, text = cli("train", TWOMOON, *base, "--out", run)
    assert code == 1 and "recipe.toml" in text and "--force" in text and "Traceback" not in text, text[-2000:]
    assert (run / "student.safetensors").read_bytes() == before

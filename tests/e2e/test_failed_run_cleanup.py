"""What a failed or interrupted training run leaves behind.

A NEW run that fails before its first checkpoint leaves nothing it created (run folder, parents
of --out; what was already in an existing --out stays); a run that has committed a state is kept
and says to resume with the same command; a resumed run never deletes anything.
"""

from __future__ import annotations

import pytest

from mpltools import trainer
from tests.e2e.helpers import TWOMOON, cli, ok, sets, tree, twomoon_split


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("cleanup")
    split = twomoon_split(root)
    return sets(
        f"data.labeled={split / 'labeled'}",
        f"data.unlabeled={split / 'unlabeled'}",
        "data.val=",
        "method.name=supervised",
        "eval.every=0",
    )


# lr 1e38: step 1 is finite, its update overflows float32, so step 2 stops with a NonFinite error (an honest mid-run failure).
DIVERGE = sets("student.lr=1e38", "schedule.steps=4")


def test_failure_after_first_checkpoint_keeps_the_run_and_a_resume_changes_nothing(base, tmp_path):
    out = tmp_path / "deep" / "run"
    code, text = cli("train", TWOMOON, *base, *DIVERGE, "--set", "checkpoint.every=1", "--out", out)
    assert code == 1 and "not finite" in text and "Traceback" not in text
    assert "resume with the same command" in text and str(out) in text
    assert (out / "state/step_000000001").is_dir()
    states = tree(out / "state")
    # The same command resumes from that state and fails the same way: a resumed run deletes nothing.
    code, text = cli("train", TWOMOON, *base, *DIVERGE, "--set", "checkpoint.every=1", "--out", out)
    assert code == 1 and "resuming" in text and "Removed" not in text
    assert tree(out / "state") == states and (out / "recipe.toml").is_file()


def test_failure_in_an_existing_empty_folder_keeps_the_folder_empty(base, tmp_path):
    out = tmp_path / "given"
    out.mkdir()
    code, text = cli("train", TWOMOON, *base, *DIVERGE, "--out", out)
    assert code == 1 and "Removed" in text and "Traceback" not in text
    assert out.is_dir() and list(out.iterdir()) == []


def test_force_restart_that_fails_leaves_no_stub(base, tmp_path):
    out = tmp_path / "old"
    ok("train", TWOMOON, *base, "--set", "schedule.steps=1", "--out", out)
    code, text = cli("train", TWOMOON, *base, *DIVERGE, "--out", out, "--force")
    assert code == 1 and "Removed" in text
    assert list(out.iterdir()) == []  # --force deleted the old run on purpose; the failed new one left nothing
    code, text = cli("train", TWOMOON, *base, "--set", "schedule.steps=1", "--out", out)  # and the folder is usable again
    assert code == 0, text[-2000:]


def test_ctrl_c_before_the_first_checkpoint_removes_the_new_run(base, tmp_path, monkeypatch):
    """KeyboardInterrupt while the data streams open (before the loop's SIGINT handler, which saves a state)."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "make_streams", interrupted)
    out = tmp_path / "deep" / "run"
    code, text = cli("train", TWOMOON, *base, "--out", out)
    assert code == 130 and "interrupted" in text and "Traceback" not in text
    assert "Removed" in text and not (tmp_path / "deep").exists()


def test_a_refused_folder_is_left_as_it_was_without_a_resume_note(base, tmp_path):
    out = tmp_path / "run"
    ok("train", TWOMOON, *base, "--set", "schedule.steps=2", "--set", "checkpoint.every=1", "--out", out)
    before = tree(out)
    code, text = cli("train", TWOMOON, *base, "--set", "schedule.steps=3", "--out", out)
    assert code == 2 and "different recipe" in text and "resume with the same command" not in text
    assert tree(out) == before

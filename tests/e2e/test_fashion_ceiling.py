"""CI-size replay of recipes/fashion_ceiling.sh (the network's and budget's ceiling on all training labels) on a tiny
IDX set the test writes: both runs, their test evaluations, the table, the refusal of a missing data folder, and a
second start that trains nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, mpl, run_process
from tests.e2e.test_fashion_study import _write_fashion


def ceiling(data: Path, out: Path, check: bool = True):
    mpl_exe = Path(sys.executable).parent / "mpl"
    return run_process(
        ["bash", str(REPO / "recipes/fashion_ceiling.sh"), str(data), str(out)],
        cwd=REPO,
        check=check,
        timeout=600,
        CEILING_STEPS="4",
        MPL=str(mpl_exe),
    )


@pytest.mark.slow
def test_fashion_ceiling_trains_on_all_labels_at_both_batches_and_tables_the_test_accuracy(tmp_path):
    _write_fashion(tmp_path / "idx")
    data = tmp_path / "data"
    for part in ("train", "test"):
        mpl("data", "import", "fashion-mnist", tmp_path / "idx", "--part", part, "--out", data / part, "--seed", 0)
    out = tmp_path / "ceiling"
    r = ceiling(data, out)
    table = (out / "ceiling.md").read_text()
    assert r.stdout == table
    for b in (16, 112):
        run = out / f"all-b{b}"
        recipe = (run / "recipe.toml").read_text()
        assert 'name = "supervised"' in recipe and f"batch_size = {b}" in recipe and str(data / "train") in recipe
        assert "steps = 4" in recipe and "wait_steps = 0" in recipe  # the budget and its scaled wait
        top1 = json.loads((run / "test.json").read_text())["top1"]
        assert f"| 300 | {b} | 4 | {4 * b:,} | {top1:.3f} |" in table  # all 300 tiny training images are labelled
    again = ceiling(data, out)
    assert "[ceiling]" not in again.stderr and again.stdout == table  # finished runs are not trained again

    missing = ceiling(tmp_path / "nowhere", tmp_path / "other", check=False)
    assert missing.returncode == 2 and "nowhere/train/manifest.json missing" in missing.stderr
    assert not (tmp_path / "other").exists()

"""CI-size version of the TwoMoon study (recipes/twomoon/README.md), through its committed script (which chains
real `mpl` commands), checking the DIRECTION of what the full study established, with wide margins: with the
paper's nets, MPL ends where supervised learning does (its teacher is dominated by the supervised loss; h is
~1e-4), so MPL is no worse than SL in success count and within a few points of it in accuracy; the all-labels
oracle shows the nets can separate the moons at this data scale, far above what any 6-label method reaches.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import run_script, sets


@pytest.mark.slow
def test_twomoon_study_ci_size(tmp_path):
    out = tmp_path / "twomoon"
    r = run_script(
        "recipes/twomoon/study.py",
        "--datasets",
        "2",
        "--first-seed",
        "100",
        "--out",
        str(out),
        *sets("schedule.steps=2500", "runtime.log_every=500"),
    )
    report = json.loads((out / "results.json").read_text())
    s = report["summary"]
    assert set(s) == {"SL", "PL", "MPL", "MPL teacher", "oracle (all labels)"}
    assert "| MPL |" in r.stdout and (out / "figure2.png").stat().st_size > 10_000 and (out / "curves.png").is_file()
    # Direction of the full study (20 datasets: SL 0/20, PL 0/20, MPL 0/20, oracle 20/20; per dataset MPL - SL is
    # within +-0.04 except rare runs where MPL's teacher drifts, down to -0.19): MPL is not better than SL ...
    assert abs(s["MPL"]["success"] - s["SL"]["success"]) <= 1, s
    assert s["MPL"]["mean"] <= s["SL"]["mean"] + 0.05, s
    # ... nor much worse (wide margin: one drifting dataset of two moves the mean by ~0.1) ...
    assert s["MPL"]["mean"] >= s["SL"]["mean"] - 0.12, s
    assert abs(s["MPL teacher"]["mean"] - s["SL"]["mean"]) <= 0.12, s
    # ... although the nets can separate the moons at this scale: the all-labels oracle is far above them all.
    assert s["oracle (all labels)"]["mean"] >= max(s[m]["mean"] for m in ("SL", "PL", "MPL")) + 0.05, s
    for row in report["per_dataset"]:
        assert all(0.0 <= v <= 1.0 for v in row["top1"].values())
        assert any(c.startswith("mpl train recipes/twomoon.toml") for c in row["commands"])

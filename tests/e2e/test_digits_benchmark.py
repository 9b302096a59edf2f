"""CI-size version of the digits benchmark (recipes/README.md), through its committed script (which chains real
`mpl` commands): MPL's student after finetuning beats supervised training on the 50 labels, as in the full runs.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import run_script, sets


@pytest.mark.slow
def test_digits_benchmark_ci_size(tmp_path):
    out = tmp_path / "digits"
    r = run_script(
        "recipes/digits_benchmark.py",
        "--seeds",
        "0",
        "--jobs",
        "1",
        "--methods",
        "supervised,mpl,mpl+finetune",
        "--out",
        str(out),
        *sets(
            "schedule.steps=400",
            "eval.every=0",
            "student.wait_steps=50",
            "method.uda_ramp_steps=100",
            "method.pseudo_labels=soft",
            "method.pseudo_label_view=weak",
        ),
    )
    report = json.loads((out / "results.json").read_text())
    s = report["summary"]
    assert "| mpl+finetune |" in r.stdout
    assert s["mpl+finetune"]["mean"] >= s["supervised"]["mean"], s
    assert 0.5 <= s["supervised"]["mean"] <= 1.0

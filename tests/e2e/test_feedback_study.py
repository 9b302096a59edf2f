"""CI-size version of recipes/feedback_study.py (digits, 5 labels per class), through the committed script.

Direction the full study established (recipes/README.md "Feedback-only study": 3 seeds at 200 steps, and a
1-seed search at 300 steps over mpl_weight, teacher lr and feedback_bn): with the teacher trained by the
student's feedback alone, the student stays near chance (0.10-0.17 top-1 on 10 classes), far below plain
supervised training on the 50 labels; the released step (no MPL gradient in the teacher) is at chance too.
The diagnostics show the feedback path is live (a non-zero MPL gradient on the teacher) but tiny.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import run_script


@pytest.mark.slow
def test_feedback_study_ci_size(tmp_path):
    out = tmp_path / "feedback"
    r = run_script(
        "recipes/feedback_study.py",
        "--seeds",
        "0",
        "--steps",
        "40",
        "--baselines",
        "supervised",
        "--variants",
        "fo-soft,fo-released",
        "--out",
        str(out),
    )
    report = json.loads((out / "results.json").read_text())
    s = report["summary"]
    assert set(s) == {"supervised", "fo-soft", "fo-released"}, s
    assert "| fo-soft |" in r.stdout and "median_abs_h" in r.stdout
    for name in ("fo-soft", "fo-released"):
        assert s[name]["mean"] <= 0.3, s  # near chance (0.1), as in the full study
    assert s["supervised"]["mean"] >= max(s["fo-soft"]["mean"], s["fo-released"]["mean"]) + 0.05, s
    diag = report["per_seed"][0]["diagnostics"]
    assert diag["fo-soft"]["median_t_grad_norm_mpl"] > 0  # the feedback reaches the teacher ...
    assert diag["fo-soft"]["median_abs_h"] < 0.1  # ... but h is small
    assert diag["fo-released"]["median_t_grad_norm_mpl"] is None  # the released step has no MPL gradient
    cmds = report["per_seed"][0]["commands"]
    assert any("method.teacher_supervised_weight=0" in c and "method.uda_weight=0" in c for c in cmds)


@pytest.mark.slow
def test_feedback_alone_teaches_the_student_at_the_working_setting(tmp_path):
    """The 2026-12 search's direction (recipes/README.md: 3 seeds at 1,000 steps, fo-soft 0.958 ± 0.016,
    released 0.079 ± 0.042): at small_cnn, no augmentation, student and teacher lr 0.5 and soft pseudo
    labels, the feedback alone lifts the student far above chance while the released step (no feedback)
    stays at chance. Shortened to 300 steps (measured once, seed 0: fo-soft 0.863, released 0.030)."""
    out = tmp_path / "fo"
    working = ('augment.kind="none"', "student.lr=0.5", "teacher.lr=0.5")
    args = [a for s in working for a in ("--fo-set", s)]
    run_script(
        "recipes/feedback_study.py", "--seeds", "0", "--steps", "300", "--baselines", "none",
        "--variants", "fo-soft,fo-released", "--out", str(out), *args,
    )  # fmt: skip
    s = json.loads((out / "results.json").read_text())["summary"]
    assert s["fo-soft"]["mean"] >= 0.5, s  # far above chance (0.1)
    assert s["fo-released"]["mean"] <= 0.2, s  # the no-feedback control stays near chance

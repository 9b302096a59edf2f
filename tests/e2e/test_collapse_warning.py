"""The pseudo-label collapse warning end to end: a real feedback-only run with the flipped sign and a large
mpl_weight (the collapse of recipes/README.md's feedback-only study, in 20 tiny steps) warns once on stderr,
at the first logging step whose pseudo labels are collapsed; the ordinary tiny digits run does not warn."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.helpers import metrics, mpl, replay, sets

DIGITS = "recipes/tiny/digits.toml"
WARNING = "pseudo labels are collapsing"
FLIPPED_FEEDBACK_ONLY = (
    "method.teacher_supervised_weight=0",
    "method.uda_weight=0",
    "method.pseudo_labels=soft",
    "method.feedback_sign=-1",
    "method.mpl_weight=100",
)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("collapse")
    replay(DIGITS, root, only="mpl data")
    return root


def train(work: Path, name: str, *assignments: str):
    r = mpl("train", DIGITS, *sets(*assignments, 'data.val=""'), "--out", f"runs/{name}", cwd=work)
    return r, [rec for rec in metrics(work / "runs" / name) if "diag/pl_max_class_fraction" in rec]


def collapsed(rec: dict) -> bool:  # 30 pseudo labels per step >= 10 classes: the warning's entropy is diag/pl_entropy_norm
    return rec["diag/pl_max_class_fraction"] > 0.5 or rec["diag/pl_entropy_norm"] < 0.5


@pytest.mark.slow
def test_collapsed_run_warns_once_at_the_onset(work):
    r, records = train(work, "flipped", *FLIPPED_FEEDBACK_ONLY)
    onset = next(rec["step"] for rec in records if collapsed(rec))
    assert records[-1]["diag/pl_max_class_fraction"] > 0.9  # (nearly) every pseudo label in one class by the end
    warnings = [line for line in r.stderr.splitlines() if WARNING in line]
    assert len(warnings) == 1, r.stderr[-3000:]
    assert warnings[0].startswith(f"warning: step {onset}: ") and "lower the teacher's lr or mpl_weight" in warnings[0]
    assert WARNING not in r.stdout


@pytest.mark.slow
def test_balanced_run_does_not_warn(work):
    r, records = train(work, "balanced")
    assert records and not any(collapsed(rec) for rec in records)
    assert WARNING not in r.stderr

"""`mpl plot feedback` through the CLI, on real tiny digits runs: the PNG decodes at the size its panels
imply, --json lists exactly the panels whose keys the metrics hold, and the refusals are clear."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mpltools.commands.plot_feedback import FEEDBACK_PANELS
from tests.e2e.helpers import REPO, cli_in_fresh_python, metrics, mpl, recipe_commands

DIGITS = "recipes/tiny/digits.toml"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Tiny digits data (split with hidden labels), a 20-step MPL run and a 10-step supervised run."""
    root = tmp_path_factory.mktemp("plot_feedback")
    shutil.copytree(REPO / "recipes", root / "recipes")
    import_line, split_line = [line for line in recipe_commands(REPO / DIGITS) if line.startswith("mpl data")]
    mpl(*import_line.split()[1:], cwd=root)
    mpl(*split_line.split()[1:], "--keep-hidden-labels", cwd=root)
    mpl("train", DIGITS, "--out", "runs/mpl", cwd=root)
    mpl("train", DIGITS, "--set", "method.name=supervised", "--set", "schedule.steps=10", "--out", "runs/sup", cwd=root)
    return root


def expected_panels(*runs: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Panel -> keys present in some run, and the panels with none, straight from metrics.jsonl."""
    keys = {k for run in runs for rec in metrics(run) for k, v in rec.items() if isinstance(v, (int, float))}
    drawn = {name: [k for k, _ in ks if k in keys] for name, _, ks, _, _ in FEEDBACK_PANELS}
    return {n: ks for n, ks in drawn.items() if ks}, [n for n, ks in drawn.items() if not ks]


def decode(path: Path):
    from matplotlib.image import imread

    pixels = imread(path)  # decodes the whole PNG (fails on a damaged one)
    assert pixels.ndim == 3 and pixels.std() > 0.01, f"{path} is blank"
    return pixels.shape[1], pixels.shape[0]


@pytest.mark.slow
def test_feedback_of_a_real_run_lists_the_panels_its_metrics_hold(work):
    recs = metrics(work / "runs/mpl")
    assert any("diag/pl_accuracy" in r for r in recs) and any("diag/t_grad_norm_mpl" in r for r in recs)
    r = mpl("plot", "feedback", "runs/mpl", "--out", "pics/fb.png", "--json", cwd=work)
    report = json.loads(r.stdout)
    drawn, absent = expected_panels(work / "runs/mpl")
    assert {p["panel"]: p["keys"] for p in report["panels"]} == drawn
    assert [p["panel"] for p in report["absent"]] == absent
    assert set(drawn) == {name for name, *_ in FEEDBACK_PANELS}  # an MPL run with hidden labels logs every group
    assert report["out"] == "pics/fb.png" and report["runs"][0]["label"] == "mpl"
    assert decode(work / "pics/fb.png") == (1380, 3 * 320 + 50)  # 7 panels: 3 columns x 3 rows at 100 dpi
    assert not list((work / "pics").glob(".*tmp*"))
    r = mpl("plot", "feedback", "runs/mpl/metrics.jsonl", "--out", "plain.png", "--smooth", "2", cwd=work)
    assert r.stdout.strip() == "plain.png" and decode(work / "plain.png")


@pytest.mark.slow
def test_runs_overlaid_and_absent_panels_left_out(work):
    # a pseudo-label style run: pseudo-label health only (no h, no teacher gradient split, no validation)
    (work / "runs/pl").mkdir(parents=True, exist_ok=True)
    lines = [
        {
            "step": s,
            "student/loss": 2.0,
            "diag/pl_entropy_norm": 0.9 - s / 100,
            "diag/pl_max_class_fraction": 0.2,
            "diag/pl_agreement": 0.3,
        }
        for s in (5, 10, 15)
    ]
    (work / "runs/pl/metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = mpl("plot", "feedback", "runs/pl", "--out", "pl.png", "--json", cwd=work)
    report = json.loads(r.stdout)
    assert [(p["panel"], p["keys"], p["missing_keys"]) for p in report["panels"]] == [
        ("pl_spread", ["diag/pl_entropy_norm", "diag/pl_max_class_fraction"], []),
        ("pl_quality", ["diag/pl_agreement"], ["diag/pl_accuracy"]),
    ]
    assert [p["panel"] for p in report["absent"]] == ["h", "h_pos_frac", "t_grad_norm", "cos_mpl", "val_top1"]
    assert decode(work / "pl.png") == (920, 370)  # two panels in one row
    r = mpl("plot", "feedback", "runs/mpl", "runs/pl", "--labels", "MPL,PL", "--out", "both.png", "--json", cwd=work)
    report = json.loads(r.stdout)
    drawn, absent = expected_panels(work / "runs/mpl", work / "runs/pl")
    assert {p["panel"]: p["keys"] for p in report["panels"]} == drawn and report["absent"] == []
    runs_of = {p["panel"]: p["runs"] for p in report["panels"]}
    assert runs_of["h"] == ["MPL"] and runs_of["pl_spread"] == ["MPL", "PL"]
    assert decode(work / "both.png") == (1380, 1010)


@pytest.mark.slow
def test_refusals(work):
    r = mpl("plot", "feedback", "runs/sup", "--out", "sup.png", cwd=work, check=False)
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    assert "runs/sup" in r.stderr and "diag/" in r.stderr and "mpl plot curves" in r.stderr
    r = mpl("plot", "feedback", "runs/mpl", "runs/sup", "--out", "sup.png", cwd=work, check=False)
    assert r.returncode == 1 and "runs/sup" in r.stderr
    assert not (work / "sup.png").exists()
    mpl("plot", "feedback", "runs/mpl", "--out", "once.png", cwd=work)
    before = (work / "once.png").read_bytes()
    r = mpl("plot", "feedback", "runs/mpl", "--out", "once.png", cwd=work, check=False)
    assert r.returncode == 1 and "--force" in r.stderr and r.stdout == ""
    assert (work / "once.png").read_bytes() == before
    assert mpl("plot", "feedback", "runs/mpl", "--out", "once.png", "--force", cwd=work).stdout.strip() == "once.png"
    r = mpl("plot", "feedback", "runs/nowhere", "--out", "x.png", cwd=work, check=False)
    assert r.returncode == 1 and "metrics.jsonl" in r.stderr and "Traceback" not in r.stderr
    r = mpl("plot", "feedback", "runs/mpl", "--out", "x.jpg", cwd=work, check=False)
    assert r.returncode == 2 and ".png" in r.stderr
    r = mpl("plot", "feedback", "runs/mpl", "runs/sup", "--labels", "one", "--out", "x.png", cwd=work, check=False)
    assert r.returncode == 2 and "--labels" in r.stderr
    assert not (work / "x.png").exists() and not (work / "x.jpg").exists()


def test_plot_feedback_help_does_not_import_torch_or_matplotlib():
    r = cli_in_fresh_python(["plot", "feedback", "--help"], never=("torch", "matplotlib"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mpl plot feedback runs/digits" in r.stdout and "--json" in r.stdout

"""CI-size replay of recipes/fashion_ssl_study.py through the committed script, on a tiny IDX set the test writes.

It proves the chain, not the numbers: import of both parts, the split with a carved validation part and
hidden labels, tuning (two settings per method, the better one on the validation split chosen), the final
runs with their finetuning and test evaluations, results.json / results.md / PNGs, and the resume: a second
start skips every finished unit, and a unit removed from results.json is run again (its `mpl train` resumes
the finished run instead of training again).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, env
from tests.e2e.test_fashion_study import _write_fashion

ARGS = ["--labels", "40", "--seeds", "0", "--steps", "6", "--tune-steps", "4", "--eval-every", "2", "--log-every", "2"]
ARGS += ["--finetune-steps", "4", "--methods", "fixmatch,mpl-hard", "--val-per-class", "5", "--in-process"]


def study(*args, check=True):
    r = subprocess.run(
        [sys.executable, "recipes/fashion_ssl_study.py", *map(str, args)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_fashion_ssl_study_ci_size_tunes_runs_reports_and_resumes(tmp_path):
    _write_fashion(tmp_path / "idx")
    out = tmp_path / "study"
    r = study(*ARGS, "--idx", tmp_path / "idx", "--out", out)
    report = json.loads((out / "results.json").read_text())
    units = report["units"]
    tune_keys = {f"40/seed0/tune/{m}/{i}" for m in ("fixmatch", "mpl-hard") for i in (0, 1)}
    assert tune_keys <= set(units) and len(units) == 6
    for m in ("fixmatch", "mpl-hard"):
        tuned = [units[f"40/seed0/tune/{m}/{i}"] for i in (0, 1)]
        final = next(u for k, u in units.items() if k.startswith(f"40/seed0/final/{m}/"))
        best = max(range(2), key=lambda i: (tuned[i]["val_top1_finetuned"], -i))
        assert final["setting"] == best and final["steps"] == 6 and all(t["steps"] == 4 for t in tuned)
        assert all(0 <= final[k] <= 1 for k in ("test_top1", "test_top1_finetuned", "val_top1", "val_top1_finetuned"))
        assert ("test_top1_teacher" in final) == (m == "mpl-hard")
        # The validation split is carved from the training images; the test part is only used by `mpl eval`.
        split = out / "data/labels40/seed0"
        train_cmd = next(c for c in final["commands"] if c.startswith("mpl train"))
        assert f'data.val="{split}/val"' in train_cmd and str(out / "data/test") not in train_cmd
        assert f"method.name={'fixmatch' if m == 'fixmatch' else 'mpl'}" in train_cmd
        assert sum(c.startswith("mpl eval") and f"--data {out / 'data/test'}" in c for c in final["commands"]) == (
            3 if m == "mpl-hard" else 2
        )
    assert json.loads((out / "data/labels40/seed0/val/manifest.json").read_text())["num_samples"] == 50
    assert (out / "data/labels40/seed0/unlabeled_hidden_labels.json").is_file()
    md = (out / "results.md").read_text()
    assert (
        "| fixmatch |" in md
        and "| mpl-hard |" in md
        and "Tuning" in md
        and "No final run" not in md
        and "Feedback in the final MPL runs" in md
    )
    for key in tune_keys:  # the tuning table's pseudo-label accuracy: the run's own diagnostics, last third
        u = units[key]
        logged = [json.loads(line) for line in (Path(u["run"]) / "metrics.jsonl").read_text().splitlines()]
        pl = [r for r in logged if "diag/pl_accuracy" in r and not r.get("final")]
        late = [r["diag/pl_accuracy"] for r in pl if r["step"] > 2 * pl[-1]["step"] / 3]
        row = f"| {u['method']} | {' '.join(u['sets'])} | {u['steps']} | {u['val_top1']:.3f} | {u['val_top1_finetuned']:.3f} "
        assert f"{row}| {sum(late) / len(late):.3f} |" in md
    # MPL against the baselines after finetuning, paired by seed (here FixMatch only; no `released` in this replay).
    mpl_ft, fix_ft = (
        next(u["test_top1_finetuned"] for k, u in units.items() if f"final/{m}" in k) for m in ("mpl-hard", "fixmatch")
    )
    goal_row = f"| mpl-hard | 1 | {mpl_ft:.3f} | fixmatch {fix_ft:.3f} | {100 * (mpl_ft - fix_ft):+.1f} | – | – | fixmatch: s0 "
    assert goal_row in md, md
    assert (out / "curves_40.png").stat().st_size > 1000 and (out / "pl_accuracy_40.png").stat().st_size > 1000
    assert report["summary"]["40"]["fixmatch"]["test_top1"]["values"] == [
        units[k]["test_top1"] for k in units if "final/fixmatch" in k
    ]
    assert "ETA" in r.stderr and "| mpl-hard |" in r.stdout

    # A second start skips every finished unit: no command runs, results unchanged.
    again = study(*ARGS, "--idx", tmp_path / "idx", "--out", out)
    assert "[study] 40/" not in again.stderr
    assert json.loads((out / "results.json").read_text())["units"] == units
    # A unit missing from results.json (the study stopped inside it) runs again; its finished run is resumed, not retrained.
    key = next(k for k in units if "final/fixmatch" in k)
    before = report["units"].pop(key)
    (out / "results.json").write_text(json.dumps(report))
    study(*ARGS, "--idx", tmp_path / "idx", "--out", out)
    redone = json.loads((out / "results.json").read_text())["units"][key]
    assert redone["test_top1_finetuned"] == before["test_top1_finetuned"]
    runs = json.loads((out / redone["run"] / "run.json").read_text())
    assert [r["start_step"] for r in runs] == [0, 6]

    # --report-only rewrites the tables elsewhere without training.
    elsewhere = tmp_path / "report"
    r = study("--out", out, "--report-only", "--report-to", elsewhere)
    assert (elsewhere / "results.md").read_text() == (out / "results.md").read_text()
    assert (elsewhere / "curves_40.png").is_file()

    # A second folder started from a copy of results.json runs other seeds; --merge-from adds its units, which the
    # first folder then skips. A folder with other budgets is refused.
    second = tmp_path / "second"
    second.mkdir()
    (second / "results.json").write_text((out / "results.json").read_text())
    study(*ARGS, "--seeds", "1", "--idx", tmp_path / "idx", "--out", second)
    theirs = json.loads((second / "results.json").read_text())["units"]
    new_keys = {k for k in theirs if k.startswith("40/seed1/final/")}
    assert len(new_keys) == 2 and all(theirs[k]["run"].startswith(str(second)) for k in new_keys)
    # A third folder runs seed 2 of one method only (`--methods` subset): it keeps the grid of the others, and
    # merges although its own command named one method.
    third = tmp_path / "third"
    third.mkdir()
    (third / "results.json").write_text((out / "results.json").read_text())
    study(*ARGS[:-5], "--methods", "fixmatch", *ARGS[-3:], "--seeds", "2", "--idx", tmp_path / "idx", "--out", third)
    third_report = json.loads((third / "results.json").read_text())
    assert set(third_report["grid"]) == {"fixmatch", "mpl-hard"}
    third_keys = {k for k in third_report["units"] if k.startswith("40/seed2/")}
    assert len(third_keys) == 1 and next(iter(third_keys)).startswith("40/seed2/final/fixmatch/")
    third_report["grid"] = {"fixmatch": third_report["grid"]["fixmatch"]}  # as an older start recorded it
    (third / "results.json").write_text(json.dumps(third_report))
    mine = set(json.loads((out / "results.json").read_text())["units"])
    r = study("--out", out, "--merge-from", second, third, "--report-only")
    assert "merged 3 unit(s)" in r.stderr
    merged = json.loads((out / "results.json").read_text())
    assert set(merged["units"]) == mine | new_keys | third_keys
    assert set(merged["grid"]) == {"fixmatch", "mpl-hard"}
    assert "Units merged from the folders of:" in (out / "results.md").read_text()
    assert f"--out {third}`" in (out / "results.md").read_text()
    assert len(merged["summary"]["40"]["fixmatch"]["test_top1"]["values"]) == 3
    md = (out / "results.md").read_text()  # the merged runs' folders stay in the second folder; the tables read them there
    assert md.count("| seed1/mpl-hard-") == 2 and md.count("| seed1/fixmatch-") == 1  # feedback + pseudo-label tables
    assert "Pseudo labels in the final runs" in md
    again = study(*ARGS[:2], "--seeds", "0", "1", *ARGS[4:], "--idx", tmp_path / "idx", "--out", out)
    assert "[study] 40/" not in again.stderr

    # results.json keeps each finished unit's trace: the tables and pictures come back from it alone once every run
    # folder is gone (a committed snapshot); a unit with neither is named, and only its diagnostics rows go.
    md = (out / "results.md").read_text()
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    (snapshot / "results.json").write_text((out / "results.json").read_text())
    assert all("val/student_top1" in u["trace"] for u in json.loads((out / "results.json").read_text())["units"].values())
    for folder in (out, second, third):
        shutil.rmtree(folder / "runs")
    study("--out", snapshot, "--report-only")
    assert (snapshot / "results.md").read_text() == md and "no trace" not in md
    assert (snapshot / "curves_40.png").stat().st_size > 1000 and (snapshot / "pl_accuracy_40.png").stat().st_size > 1000
    bare = json.loads((snapshot / "results.json").read_text())
    gone = next(k for k in bare["units"] if k.startswith("40/seed1/final/mpl-hard/"))
    del bare["units"][gone]["trace"]
    (snapshot / "results.json").write_text(json.dumps(bare))
    study("--out", snapshot, "--report-only")
    md_bare = (snapshot / "results.md").read_text()
    assert "1 finished unit(s) have no trace and no run folder left" in md_bare and gone in md_bare
    assert md_bare.count("| seed1/mpl-hard-") == 0 and md.count("| seed1/mpl-hard-") == 2
    assert f"s1: {bare['units'][gone]['test_top1']:.3f}" in md_bare  # still in the test top-1 table

    other = json.loads((second / "results.json").read_text())
    (second / "results.json").write_text(json.dumps({**other, "steps": 7}))
    r = study("--out", out, "--merge-from", second, "--report-only", check=False)
    assert r.returncode != 0 and "steps=7" in r.stderr and "only studies with the same settings merge" in r.stderr
    third_report["grid"] = {"fixmatch": [["method.fixmatch_threshold=0.5"], ["method.fixmatch_threshold=0.6"]]}
    (third / "results.json").write_text(json.dumps(third_report))
    r = study("--out", out, "--merge-from", third, "--report-only", check=False)
    assert r.returncode != 0 and "grid=" in r.stderr and "only studies with the same settings merge" in r.stderr


def _unit(tmp_path, method, seed, finetuned, setting=0):
    return {
        "labels": 40, "seed": seed, "phase": "final", "method": method, "setting": setting, "sets": [], "steps": 6,
        "val_top1": 0.5, "val_top1_finetuned": 0.5, "test_top1": finetuned - 0.01, "test_top1_finetuned": finetuned,
        "run": str(tmp_path / "gone" / f"{method}-{seed}"),
    }  # fmt: skip


def test_candidate_goal_table_pairs_with_another_folders_baselines(tmp_path):
    """A candidate's folder runs MPL only; --baselines-from pairs its goal table with the main study's finals."""
    budget = {"tune_seed": 0, "steps": 6, "tune_steps": 4, "val_per_class": 5}
    main, cand = tmp_path / "main", tmp_path / "cand"
    finals = {"uda": (0.70, 0.66, 0.72), "fixmatch": (0.60, 0.71, 0.65), "released": (0.66, 0.64, 0.70)}
    units = {f"40/seed{s}/final/{m}/0": _unit(tmp_path, m, s, v[s]) for m, v in finals.items() for s in range(3)}
    units["40/seed0/final/mpl-hard/0"] = _unit(tmp_path, "mpl-hard", 0, 0.50)  # the main study's own MPL: not a baseline
    mine = {f"40/seed{s}/final/mpl-hard/0": _unit(tmp_path, "mpl-hard", s, v) for s, v in enumerate((0.71, 0.70, 0.74))}
    mine["40/seed3/final/mpl-hard/0"] = _unit(tmp_path, "mpl-hard", 3, 0.717)  # ahead of the baselines: not paired
    for folder, record in (
        (main, {"command": "python main-study", "units": units}),
        (cand, {"units": mine, "tune_steps": 0}),
    ):  # a candidate may skip tuning
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({**budget, "grid": {}, **record}))
    r = study("--out", cand, "--report-only", "--baselines-from", main)
    md = (cand / "results.md").read_text()
    # UDA's mean (0.693) beats FixMatch's (0.653); differences by seed: +1.0, +4.0, +2.0 -> +2.3 ± 1.5 points;
    # against released: +5.0, +6.0, +4.0 -> +5.0 ± 1.0.
    row = "| mpl-hard | 4 | 0.717 | uda 0.693 | +2.3 ± 1.5 | released 0.667 | +5.0 ± 1.0 | uda: s0 +1.0, s1 +4.0, s2 +2.0; "
    assert row in md and "Baselines of the goal table from the folder of: `python main-study`" in md, md
    assert r.stdout.strip() == md.strip()
    assert json.loads((cand / "results.json").read_text())["baselines"]["units"].keys() == {
        k for k in units if "mpl-hard" not in k
    }
    # A baseline whose screen won reruns its finals in the screen's folder: a later folder's finals of a method replace
    # the earlier folder's. FixMatch's (0.69, 0.70, 0.73; mean 0.707) now beat UDA's: +2.0, +0.0, +1.0 -> +1.0 ± 1.0.
    screen = tmp_path / "screen"
    screen.mkdir()
    redone = {f"40/seed{s}/final/fixmatch/1": _unit(tmp_path, "fixmatch", s, v) for s, v in enumerate((0.69, 0.70, 0.73))}
    (screen / "results.json").write_text(json.dumps({**budget, "command": "python screen", "grid": {}, "units": redone}))
    r = study("--out", cand, "--report-only", "--baselines-from", main, screen)
    md = (cand / "results.md").read_text()
    row = "| mpl-hard | 4 | 0.717 | fixmatch 0.707 | +1.0 ± 1.0 | released 0.667 | +5.0 ± 1.0 | fixmatch: s0 +2.0, s1 +0.0, s2 +1.0; "
    assert row in md and "- replaced for fixmatch at 40 labels by the folder of: `python screen`" in md, md
    kept = json.loads((cand / "results.json").read_text())["baselines"]["units"]
    assert kept.keys() == {k for k in units if "uda" in k or "released" in k} | redone.keys()
    # A folder without any baseline final (e.g. a candidate's) is refused by name; nothing is written.
    before = (cand / "results.json").read_text()
    r = study("--out", cand, "--report-only", "--baselines-from", main, cand, check=False)
    assert r.returncode != 0 and f"{cand}/results.json has no final run" in r.stderr and "Traceback" not in r.stderr
    assert (cand / "results.json").read_text() == before
    # A study with another budget is refused, naming the key; nothing is written.
    (main / "results.json").write_text(json.dumps({**budget, "steps": 7, "grid": {}, "units": units}))
    r = study("--out", cand, "--report-only", "--baselines-from", main, check=False)
    assert r.returncode != 0 and "steps=7" in r.stderr and "same budget" in r.stderr and "Traceback" not in r.stderr
    assert (cand / "results.json").read_text() == before


@pytest.mark.slow
def test_tune_only_runs_the_screen_and_stops(tmp_path):
    """--tune-only (a screen of an extra --set): the method's tuning runs, then no final run; resumable like the rest."""
    _write_fashion(tmp_path / "idx")
    out = tmp_path / "screen"
    args = [*ARGS[:-5], "--methods", "fixmatch", *ARGS[-3:], "--idx", tmp_path / "idx", "--out", out]
    study(*args, "--tune-only", "--set", "method.fixmatch_weight=2.0")
    units = json.loads((out / "results.json").read_text())["units"]
    assert set(units) == {"40/seed0/tune/fixmatch/0", "40/seed0/tune/fixmatch/1"}
    assert all(
        "method.fixmatch_weight=2.0" in next(c for c in u["commands"] if c.startswith("mpl train")) for u in units.values()
    )
    assert not (out / "runs/labels40/seed0/final").exists()
    r = study(*args, "--tune-only", "--tune-steps", "0", check=False)
    assert r.returncode == 2 and "--tune-only needs tuning runs" in r.stderr

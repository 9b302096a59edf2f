"""TwoMoon study (paper §3.1, Figure 2): success rate of Supervised Learning, Pseudo Labels and Meta
Pseudo Labels over many random TwoMoon datasets, through the real `mpl` commands.

    .venv/bin/python recipes/twomoon/study.py [--datasets 20] [--setting NAME] [--out DIR] [--jobs 2]
    .venv/bin/python recipes/twomoon/study.py --list          # the settings and what they change

Per dataset k (seed S = first_seed + k):

    mpl data import twomoon --seed S --noise N --scale C          2,000 points, two moons of 1,000
    mpl data split --labeled-per-class 3 --val-per-class 0 --include-labeled-in-unlabeled --seed S
    mpl train recipes/twomoon.toml --set method.name=supervised   (SL)
    mpl train ... --set method.name=pseudo-label --set method.teacher_checkpoint=<SL student>   (PL)
    mpl train ...                                                 (MPL; its student is scored)
    [oracle] mpl train ... --set method.name=supervised --set data.labeled=<all 2,000 points>

A method "succeeds" on a dataset when its final network classifies >= 95% of all 2,000 points
correctly (the final validation line of metrics.jsonl: data.val = all points). Prints a table of
success counts and mean accuracy per method, writes OUT/results.json, and draws Figure 2 (the
decision regions of SL, PL and MPL on one dataset, labelled points marked) with `mpl plot regions`
and the three runs' curves with `mpl plot curves`.

Settings keep everything the paper states (2,000 points, 3 labels per moon, 2x8 sigmoid MLPs,
U(-0.1, 0.1) init, SGD lr 0.1, no regularisation) and vary only what it leaves open; the
`diagnostic` ones break a stated value on purpose and say so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/twomoon.toml"
SUCCESS = 0.95


@dataclass(frozen=True)
class Setting:
    summary: str
    noise: float = 0.1
    scale: float = 1.0
    common: tuple[str, ...] = ()  # --set for every run (SL, PL, MPL, oracle)
    pl: tuple[str, ...] = ()  # extra --set for Pseudo Labels
    mpl: tuple[str, ...] = ()  # extra --set for MPL
    faithful: bool = True
    oracle: bool = False  # also train on all 2,000 labels (the architecture's ceiling at this budget)


# Every setting spells out all the values the paper leaves open, so its table does not depend on
# what recipes/twomoon.toml happens to say. "default" is what the recipe encodes.
MINI = ("data.batch_size=6", "data.unlabeled_ratio=50")  # all 6 labels + 300 unlabelled points per step
FULL = ("data.batch_size=6", "data.unlabeled_ratio=333")  # all 6 labels + 1,998 unlabelled points per step
PAPER_MPL = (
    "method.pseudo_labels=sample",
    "method.feedback=taylor",
    "method.baseline=true",
    "method.mpl_weight=1.0",
    "method.teacher_supervised_weight=1.0",
    "method.uda_weight=0.0",
)
SETTINGS: dict[str, Setting] = {
    "default": Setting(
        "the recipe: moons scaled x20 (noise 0.1 before scaling), 5,000 steps, all 6 labelled + 300 unlabelled points "
        "per step; MPL with sampled hard pseudo labels, h = CE_old - CE_new minus a moving-average baseline, teacher "
        "also trained on the labels (weight 1), no UDA; plus the all-labels oracle",
        scale=20.0,
        common=("schedule.steps=5000", *MINI),
        pl=("method.pseudo_labels=sample",),
        mpl=PAPER_MPL,
        oracle=True,
    ),
    "literal": Setting(
        "as default but the moons at their natural size (x in [-1, 2], scale 1): the sigmoid nets stay almost linear; "
        "plus the all-labels oracle",
        scale=1.0,
        common=("schedule.steps=5000", *MINI),
        pl=("method.pseudo_labels=sample",),
        mpl=PAPER_MPL,
        oracle=True,
    ),
    "full-batch": Setting(
        "as default but every step uses all 1,998 unlabelled points (full batch) instead of 300",
        scale=20.0,
        common=("schedule.steps=5000", *FULL),
        pl=("method.pseudo_labels=sample",),
        mpl=PAPER_MPL,
    ),
    "soft": Setting(
        "as default but soft pseudo labels: MPL's teacher gets the exact one-step meta-gradient (no REINFORCE "
        "noise); PL's student learns the teacher's probabilities",
        scale=20.0,
        common=("schedule.steps=5000", *MINI),
        pl=("method.pseudo_labels=soft",),
        mpl=(*PAPER_MPL, "method.pseudo_labels=soft"),
    ),
    "argmax-x100": Setting(
        "as default but argmax pseudo labels (PL too), no baseline and the MPL term x100 (h is ~1e-4 of the "
        "supervised loss): the feedback then acts like h-weighted self-training of the teacher",
        scale=20.0,
        common=("schedule.steps=5000", *MINI),
        pl=("method.pseudo_labels=argmax",),
        mpl=(*PAPER_MPL, "method.pseudo_labels=argmax", "method.baseline=false", "method.mpl_weight=100.0"),
    ),
    "pure-mpl": Setting(
        "as default but the teacher learns from the feedback alone (the paper's §2 objective: no supervised "
        "loss on the teacher), MPL term x1000",
        scale=20.0,
        common=("schedule.steps=5000", *MINI),
        pl=("method.pseudo_labels=sample",),
        mpl=(*PAPER_MPL, "method.teacher_supervised_weight=0.0", "method.mpl_weight=1000.0"),
    ),
}


def mpl_command() -> list[str]:
    exe = Path(sys.executable).parent / "mpl"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mpltools"]


def mpl(*args, commands: list[str]) -> str:
    cmd = [*mpl_command(), *map(str, args)]
    commands.append("mpl " + shlex.join(cmd[len(mpl_command()) :]))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MKL_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r.stdout.strip()


def final_metrics(run: Path) -> dict:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    finals = [rec for rec in lines if rec.get("final")]
    if not finals:
        raise RuntimeError(f"{run}/metrics.jsonl has no final validation line")
    return finals[-1]


def one_dataset(k: int, seed: int, setting: Setting, out: Path, extra: list[str]) -> dict:
    commands: list[str] = []
    start = time.perf_counter()
    d = out / "data" / f"d{k:02d}"
    runs = out / "runs" / f"d{k:02d}"
    mpl(
        "data",
        "import",
        "twomoon",
        "--out",
        d / "all",
        "--seed",
        seed,
        "--noise",
        setting.noise,
        "--scale",
        setting.scale,
        "--force",
        commands=commands,
    )
    mpl(
        "data",
        "split",
        d / "all",
        "--labeled-per-class",
        "3",
        "--val-per-class",
        "0",
        "--include-labeled-in-unlabeled",
        "--seed",
        seed,
        "--out",
        d / "split",
        "--force",
        commands=commands,
    )
    base = [
        f'data.labeled="{d}/split/labeled"',
        f'data.unlabeled="{d}/split/unlabeled"',
        f'data.val="{d}/all"',
        "eval.every=0",
        *setting.common,
        *extra,
    ]

    def train(name: str, sets: list[str]) -> dict:
        args = [a for s in base + sets for a in ("--set", s)]
        mpl("train", RECIPE, *args, "--seed", seed, "--out", runs / name, "--force", commands=commands)
        return final_metrics(runs / name)

    acc = {}
    acc["SL"] = train("sl", ["method.name=supervised"])["val/student_top1"]
    acc["PL"] = train(
        "pl", ["method.name=pseudo-label", f'method.teacher_checkpoint="{runs}/sl/student.safetensors"', *setting.pl]
    )["val/student_top1"]
    m = train("mpl", ["method.name=mpl", *setting.mpl])
    acc["MPL"], acc["MPL teacher"] = m["val/student_top1"], m["val/teacher_top1"]
    if setting.oracle:
        acc["oracle (all labels)"] = train(
            "oracle", ["method.name=supervised", f'data.labeled="{d}/all"', "data.batch_size=2000"]
        )["val/student_top1"]
    return {"dataset": k, "seed": seed, "top1": acc, "seconds": time.perf_counter() - start, "commands": commands}


def summarise(rows: list[dict]) -> tuple[str, dict]:
    methods = list(rows[0]["top1"])
    lines = [f"| method | success (top-1 >= {SUCCESS}) | mean top-1 ± std | min | max |", "|---|---:|---:|---:|---:|"]
    summary = {}
    for m in methods:
        v = [r["top1"][m] for r in rows]
        wins = sum(x >= SUCCESS for x in v)
        std = statistics.stdev(v) if len(v) > 1 else 0.0
        summary[m] = {"success": wins, "datasets": len(v), "mean": statistics.fmean(v), "std": std, "min": min(v), "max": max(v)}
        lines.append(f"| {m} | {wins}/{len(v)} | {statistics.fmean(v):.3f} ± {std:.3f} | {min(v):.3f} | {max(v):.3f} |")
    return "\n".join(lines), summary


def feedback_stats(rows: list[dict], out: Path, soft: bool) -> dict:
    """How strong MPL's feedback is next to the teacher's supervised loss, over all logged steps of all MPL runs.

    The teacher's MPL term is |h_c * CE(y_hat, T(x_u))| for hard pseudo labels; with soft ones it is the
    exact meta-gradient surrogate sum(p * dL/dp), logged as teacher/mpl."""
    h, hc_term, sup = [], [], []
    for r in rows:
        path = out / "runs" / f"d{r['dataset']:02d}" / "mpl" / "metrics.jsonl"
        for line in path.read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if "feedback/h" in rec:
                h.append(abs(rec["feedback/h"]))
                hc_term.append(abs(rec["teacher/mpl"] if soft else rec["feedback/h_centered"] * rec["teacher/mpl"]))
                sup.append(rec["teacher/sup"])
    if not h:
        return {}

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "logged_steps": len(h),
        "abs_h_median": pct(h, 0.5),
        "abs_h_p90": pct(h, 0.9),
        "mpl_term_median": pct(hc_term, 0.5),
        "mpl_term_p90": pct(hc_term, 0.9),
        "teacher_sup_median": pct(sup, 0.5),
        "teacher_sup_p90": pct(sup, 0.9),
    }


def figures(rows: list[dict], out: Path, k: int | None) -> dict:
    """Figure 2 (decision regions of SL, PL, MPL on one dataset) and the curves of those runs."""
    if k is None:
        k = rows[0]["dataset"]
    row = next(r for r in rows if r["dataset"] == k)
    d, runs, log = out / "data" / f"d{k:02d}", out / "runs" / f"d{k:02d}", []
    a = row["top1"]
    titles = "Supervised Learning,Pseudo Labels,Meta Pseudo Labels"
    regions = mpl(
        "plot",
        "regions",
        runs / "sl/student.safetensors",
        runs / "pl/student.safetensors",
        runs / "mpl/student.safetensors",
        "--data",
        d / "all",
        "--labeled",
        d / "split/labeled",
        "--titles",
        titles,
        "--out",
        out / "figure2.png",
        "--force",
        commands=log,
    )
    curves = mpl(
        "plot",
        "curves",
        runs / "sl",
        runs / "pl",
        runs / "mpl",
        "--labels",
        "SL,PL,MPL",
        "--smooth",
        "5",
        "--out",
        out / "curves.png",
        "--force",
        commands=log,
    )
    return {"dataset": k, "seed": row["seed"], "top1": a, "figure2": regions, "curves": curves, "commands": log}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", type=int, default=20, help="number of random TwoMoon datasets (default 20)")
    p.add_argument("--first-seed", type=int, default=0, help="dataset k uses seed first_seed + k (data and split)")
    p.add_argument("--setting", default="default", help="one of the settings (see --list); default: the recipe's")
    p.add_argument(
        "--out", type=Path, default=None, help="work folder, relative to the repo root (default runs/twomoon_study/SETTING)"
    )
    p.add_argument("--jobs", type=int, default=2, help="datasets processed in parallel (default 2 = 2 cores)")
    p.add_argument("--figure-dataset", type=int, default=None, help="dataset drawn in figure2.png (default: the first)")
    p.add_argument("--no-figure", action="store_true", help="skip the PNGs")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for every mpl train (repeatable)")
    p.add_argument("--list", action="store_true", help="list the settings and exit")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: re-read OUT/results.json and the run folders, print the tables again",
    )
    args = p.parse_args(argv)
    if args.list:
        for name, s in SETTINGS.items():
            print(
                f"{name}{'' if s.faithful else ' (diagnostic: breaks a stated value)'}\n    {s.summary}\n"
                f"    data: --noise {s.noise} --scale {s.scale}; all runs: {' '.join(s.common)}\n"
                f"    PL: {' '.join(s.pl) or '-'}; MPL: {' '.join(s.mpl) or '-'}"
            )
        return 0
    if args.setting not in SETTINGS:
        p.error(f"unknown setting {args.setting!r}; choose from {', '.join(SETTINGS)} (see --list)")
    setting = SETTINGS[args.setting]
    out = args.out or Path("runs/twomoon_study") / args.setting
    out = out if out.is_absolute() else REPO / out
    if args.report_only:
        report = json.loads((out / "results.json").read_text(encoding="utf-8"))
        rows, figure, wall, cpu = report["per_dataset"], report.get("figure"), report["wall_seconds"], report["cpu_seconds"]
        text, summary = summarise(rows)
        feedback = feedback_stats(rows, out, soft="method.pseudo_labels=soft" in setting.mpl)
    else:
        start = time.perf_counter()
        jobs = [(k, args.first_seed + k) for k in range(args.datasets)]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda job: one_dataset(job[0], job[1], setting, out, args.sets), jobs))
        text, summary = summarise(rows)
        feedback = feedback_stats(rows, out, soft="method.pseudo_labels=soft" in setting.mpl)
        figure = None if args.no_figure else figures(rows, out, args.figure_dataset)
        wall = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime
        command = "python recipes/twomoon/study.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        report = {
            "command": command.strip(),
            "setting": args.setting,
            "description": setting.summary,
            "faithful": setting.faithful,
            "noise": setting.noise,
            "scale": setting.scale,
            "common_sets": list(setting.common),
            "pl_sets": list(setting.pl),
            "mpl_sets": list(setting.mpl),
            "extra_sets": args.sets,
            "success_threshold": SUCCESS,
        }
    report.update(summary=summary, feedback=feedback, per_dataset=rows, figure=figure, wall_seconds=wall, cpu_seconds=cpu)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "results.json")
    print(f"TwoMoon, setting {args.setting!r}{'' if setting.faithful else ' (diagnostic)'}: {setting.summary}")
    print(
        f"{len(rows)} datasets (seeds {args.first_seed}..{args.first_seed + len(rows) - 1}); success = top-1 >= {SUCCESS} on all 2,000 points"
    )
    print(text)
    if figure:
        print(
            f"figure 2 (dataset {figure['dataset']}, seed {figure['seed']}; top-1 "
            + ", ".join(f"{m} {v:.3f}" for m, v in figure["top1"].items())
            + f"): {figure['figure2']}; curves: {figure['curves']}"
        )
    if feedback:
        print(
            f"MPL feedback over {feedback['logged_steps']} logged steps: |h| median {feedback['abs_h_median']:.1e} "
            f"(90th pct {feedback['abs_h_p90']:.1e}); teacher's MPL term {'sum p*dL/dp' if 'method.pseudo_labels=soft' in setting.mpl else '|h_c * CE(y_hat, T)|'} "
            f"median {feedback['mpl_term_median']:.1e} "
            f"(90th pct {feedback['mpl_term_p90']:.1e}) vs its supervised loss median {feedback['teacher_sup_median']:.1e} "
            f"(90th pct {feedback['teacher_sup_p90']:.1e})"
        )
    print(f"wall {wall:.0f} s, CPU {cpu:.0f} s; results in {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

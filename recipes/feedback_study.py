"""Feedback study on digits (5 labels per class): does MPL's feedback alone teach the student?

    .venv/bin/python recipes/feedback_study.py [--seeds 0 1 2] [--steps 300] [--out runs/feedback_study] [--jobs 1]
    .venv/bin/python recipes/feedback_study.py --seeds 10 --baselines none --fo-set method.mpl_weight=100   # one search point

Per seed S, on the split of `recipes/digits_benchmark.py` (50 labelled, 300 held-out, 1,447
unlabelled images) and with `recipes/digits.toml` at a short step budget (`--steps`):

- the baselines of the digits benchmark (supervised, pseudo-label, uda, mpl, mpl+finetune), run
  through that script's own `one_seed`, i.e. the same `mpl` commands;
- **feedback-only** MPL: the teacher has no supervised and no UDA loss
  (`--set method.teacher_supervised_weight=0 --set method.uda_weight=0`), so the student's feedback
  is the teacher's only signal. Variants: `fo-soft` (soft pseudo labels, exact one-step
  meta-gradient), `fo-dot` (sampled labels, `feedback=dot`), `fo-taylor` (sampled labels,
  `feedback=taylor`), `fo-released` (`method.name=released`: the authors' step, which has no MPL
  gradient in the teacher, so it is the no-feedback control) and `fo-flipped` (`fo-soft` with
  `method.feedback_sign=-1`, the sign-flipped ablation).

Every number is `mpl eval --json` top-1 of the final student on the 300 held-out images. For each
feedback-only run the diagnostics of its `metrics.jsonl` are summarised (median |h|, median norm of
the teacher's MPL gradient, pseudo-label entropy and teacher/student agreement at the end).
Prints markdown tables (mean ± std over the seeds) and writes OUT/results.json.
`--fo-set` adds a `--set` to the feedback-only runs only (the search); `--set` to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_benchmark import METHODS, RECIPE, REPO, mpl, one_seed, top1  # noqa: E402

FEEDBACK_ONLY = ("method.teacher_supervised_weight=0", "method.uda_weight=0")
VARIANTS = {
    "fo-soft": ("method.pseudo_labels=soft",),
    "fo-dot": ("method.pseudo_labels=sample", "method.feedback=dot"),
    "fo-taylor": ("method.pseudo_labels=sample", "method.feedback=taylor"),
    "fo-released": ("method.name=released",),
    "fo-flipped": ("method.pseudo_labels=soft", "method.feedback_sign=-1"),
}


def budget(steps: int) -> list[str]:
    """A short schedule scaled from digits.toml's 1,500 steps (warm-up, wait, UDA ramp, eval)."""
    w = max(1, steps // 15)
    return [
        f"schedule.steps={steps}",
        f"teacher.warmup_steps={w}",
        f"student.warmup_steps={w}",
        f"student.wait_steps={w}",
        f"method.uda_ramp_steps={max(1, steps // 5)}",
        f"eval.every={steps}",
        f"checkpoint.every={steps}",
        f"runtime.log_every={max(1, steps // 10)}",
    ]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def diagnostics(run: Path) -> dict:
    """Summary of the feedback diagnostics in RUN/metrics.jsonl (logging steps only)."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    steps = [x for x in lines if "feedback/h" in x]
    last = steps[-1] if steps else {}
    return {
        "median_abs_h": _median([abs(x["feedback/h"]) for x in steps]),
        "median_t_grad_norm_mpl": _median([x["diag/t_grad_norm_mpl"] for x in steps if "diag/t_grad_norm_mpl" in x]),
        "median_teacher_mpl_loss": _median([abs(x["teacher/mpl"]) for x in steps if "teacher/mpl" in x]),
        "final_pl_entropy_norm": last.get("diag/pl_entropy_norm"),
        "final_pl_agreement": last.get("diag/pl_agreement"),
        "final_pl_accuracy": last.get("diag/pl_accuracy"),  # where the split kept the hidden labels
        "final_student_ce_labeled": last.get("student/ce_new"),
    }


def feedback_only(seed: int, out: Path, extra: list[str], fo_extra: list[str], variants: tuple[str, ...]) -> dict:
    """The feedback-only variants on seed's split (made by one_seed or here)."""
    log: list[str] = []
    start = time.perf_counter()
    split = out / "data" / f"seed{seed}"
    if not (split / "val").exists():
        mpl(
            "data",
            "split",
            out / "data" / "all",
            "--labeled-per-class",
            "5",
            "--val-per-class",
            "30",
            "--seed",
            seed,
            "--out",
            split,
            "--keep-hidden-labels",
            "--force",
            log=log,
        )  # diag/pl_accuracy only
    data = [f'data.labeled="{split}/labeled"', f'data.unlabeled="{split}/unlabeled"', f'data.val="{split}/val"']
    result, diag = {}, {}
    for name in variants:
        sets = [*data, *extra, *FEEDBACK_ONLY, *VARIANTS[name], *fo_extra]
        run = out / "runs" / f"seed{seed}" / name
        student = mpl("train", RECIPE, *[a for s in sets for a in ("--set", s)], "--seed", seed, "--out", run, "--force", log=log)
        result[name] = top1(student, f"{split}/val", log)
        diag[name] = diagnostics(run)
    return {"top1": result, "diagnostics": diag, "seconds": time.perf_counter() - start, "commands": log}


def table(rows: list[dict], names: list[str]) -> tuple[str, dict]:
    seeds = [r["seed"] for r in rows]
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |", "|---|" + "---:|" * (len(seeds) + 1)]
    summary = {}
    for m in names:
        values = [r["top1"][m] for r in rows]
        mean, std = statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
        summary[m] = {"mean": mean, "std": std, "values": values}
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {mean:.3f} ± {std:.3f} |")
    return "\n".join(lines), summary


def diag_table(rows: list[dict], variants: tuple[str, ...]) -> str:
    keys = (
        "median_abs_h",
        "median_t_grad_norm_mpl",
        "median_teacher_mpl_loss",
        "final_pl_entropy_norm",
        "final_pl_agreement",
        "final_pl_accuracy",
        "final_student_ce_labeled",
    )
    lines = ["| variant (mean over seeds) | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for v in variants:
        cells = []
        for k in keys:
            vals = [r["diagnostics"][v][k] for r in rows if r["diagnostics"][v][k] is not None]
            cells.append(f"{statistics.fmean(vals):.3g}" if vals else "–")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split/training seeds (default 0 1 2)")
    p.add_argument("--steps", type=int, default=300, help="training steps of every run (default 300)")
    p.add_argument("--out", type=Path, default=Path("runs/feedback_study"), help="work folder (relative to the repo root)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run in parallel (default 1)")
    p.add_argument("--baselines", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}, or 'none'")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for every mpl train")
    p.add_argument("--fo-set", dest="fo_sets", action="append", default=[], help="extra --set for the feedback-only runs")
    p.add_argument("--json", type=Path, default=None, help="results file (default OUT/results.json)")
    args = p.parse_args(argv)
    baselines = () if args.baselines == "none" else tuple(m.strip() for m in args.baselines.split(",") if m.strip())
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if set(baselines) - set(METHODS) or set(variants) - set(VARIANTS):
        p.error(f"unknown method(s) {sorted((set(baselines) - set(METHODS)) | (set(variants) - set(VARIANTS)))}")
    out = args.out if args.out.is_absolute() else REPO / args.out
    extra = budget(args.steps) + args.sets
    start = time.perf_counter()
    log: list[str] = []
    mpl("data", "import", "digits", "--out", out / "data" / "all", "--seed", "0", "--force", log=log)

    def seed_row(seed: int) -> dict:
        row = one_seed(seed, out, extra, baselines) if baselines else {"seed": seed, "top1": {}, "commands": []}
        fo = feedback_only(seed, out, extra, args.fo_sets, variants)
        row["top1"].update(fo["top1"])
        return {**row, "diagnostics": fo["diagnostics"], "commands": row["commands"] + fo["commands"]}

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(seed_row, args.seeds))
    names = [m for m in (*METHODS[:4], "mpl teacher", "mpl+finetune", *VARIANTS) if all(m in r["top1"] for r in rows)]
    text, summary = table(rows, names)
    dtext = diag_table(rows, variants)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    command = "python recipes/feedback_study.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command.strip(),
        "recipe": RECIPE,
        "seeds": args.seeds,
        "steps": args.steps,
        "extra_sets": extra,
        "fo_sets": args.fo_sets,
        "summary": summary,
        "per_seed": rows,
        "wall_seconds": seconds,
        "cpu_seconds": cpu,
        "import": log,
    }
    target = args.json or out / "results.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    print(f"Digits, 5 labels per class, {args.steps} steps, student top-1 on 300 held-out images ({len(rows)} seeds)")
    print(text)
    print()
    print(dtext)
    print(f"\nwall {seconds:.0f} s, CPU {cpu:.0f} s; results in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

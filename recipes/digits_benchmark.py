"""Digits semi-supervised benchmark: supervised, Pseudo Labels, UDA and MPL (+ finetuning) on the
bundled 8x8 digits with 5 labelled images per class, through the real `mpl` commands.

    .venv/bin/python recipes/digits_benchmark.py [--seeds 0 1 2] [--out runs/digits_benchmark] [--jobs 2]

Per seed S (the split and the training seed): `mpl data split --labeled-per-class 5
--val-per-class 30 --seed S` gives 50 labelled images, 300 held-out test images (30 per class)
and 1,447 unlabelled ones; then, all with `recipes/digits.toml` (small CNN, 1,500 steps):

    supervised    mpl train --set method.name=supervised          (the 50 labelled images only)
    pseudo-label  mpl train --set method.name=pseudo-label         (fixed teacher = the supervised model)
    uda           mpl train --set method.name=uda                  (= MPL's teacher without the feedback)
    mpl           mpl train                                        (the student)
    mpl+finetune  mpl finetune RUN/student.safetensors --recipe recipes/digits.toml

and every final checkpoint is scored with `mpl eval --data SPLIT/val --json` (top-1 on the 300
held-out images). The held-out set is logged during training but never used to pick a checkpoint.
Prints a table (mean ± std of test top-1 over the seeds) and writes OUT/results.json.
Extra `--set` arguments go to every `mpl train` (e.g. --set schedule.steps=300 for a quick run).
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/digits.toml"
METHODS = ("supervised", "pseudo-label", "uda", "mpl", "mpl+finetune")
DIGITS_SPLIT = ("--labeled-per-class", "5", "--val-per-class", "30")


def mpl_command() -> list[str]:
    """The `mpl` of this interpreter's environment (falls back to `python -m mpltools`)."""
    exe = Path(sys.executable).parent / "mpl"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mpltools"]


def mpl(*args: str, log: list[str]) -> str:
    cmd = [*mpl_command(), *map(str, args)]
    log.append("mpl " + shlex.join(cmd[len(mpl_command()) :]))
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MKL_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r.stdout.strip()


def top1(checkpoint: str, data: str, log: list[str]) -> float:
    return float(json.loads(mpl("eval", checkpoint, "--data", data, "--json", log=log))["top1"])


def one_seed(
    seed: int,
    out: Path,
    extra: list[str],
    methods: tuple[str, ...],
    *,
    recipe: str = RECIPE,
    data_all: Path | None = None,
    split_args: tuple[str, ...] = DIGITS_SPLIT,
    test: str | None = None,
) -> dict:
    """All methods on one split; returns {method: test top-1} plus the commands run and seconds.

    The keywords let other studies reuse it (recipes/fashion_study.py): the recipe, the imported
    data set to split (default OUT/data/all), the `mpl data split` size options and the held-out
    set (default the split's val). Seconds per method (its training and evals) are in "method_seconds".
    """
    log: list[str] = []
    start = time.perf_counter()
    all_data = data_all or out / "data" / "all"
    split = out / "data" / f"seed{seed}"
    mpl("data", "split", all_data, *split_args, "--seed", seed, "--out", split, "--force", log=log)
    runs = out / "runs" / f"seed{seed}"
    test = test or f"{split}/val"
    data_sets = [f'data.labeled="{split}/labeled"', f'data.unlabeled="{split}/unlabeled"', f'data.val="{test}"']
    sets = [a for s in data_sets + list(extra) for a in ("--set", s)]
    result: dict[str, float] = {}
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(method: str) -> None:
        now = time.perf_counter()
        seconds[method], clock[0] = now - clock[0], now

    def train(method: str, *more: str) -> str:
        return mpl(
            "train",
            recipe,
            *sets,
            "--set",
            f"method.name={method}",
            *more,
            "--seed",
            seed,
            "--out",
            runs / method,
            "--force",
            log=log,
        )

    lap("split")
    supervised = None
    if "supervised" in methods or "pseudo-label" in methods:
        supervised = train("supervised")
        result["supervised"] = top1(supervised, test, log)
        lap("supervised")
    if "pseudo-label" in methods:
        result["pseudo-label"] = top1(train("pseudo-label", "--set", f'method.teacher_checkpoint="{supervised}"'), test, log)
        lap("pseudo-label")
    if "uda" in methods:
        result["uda"] = top1(train("uda"), test, log)
        lap("uda")
    if "mpl" in methods or "mpl+finetune" in methods:
        student = train("mpl")
        result["mpl"] = top1(student, test, log)
        result["mpl teacher"] = top1(str(runs / "mpl" / "teacher.safetensors"), test, log)
        lap("mpl")
        if "mpl+finetune" in methods:
            finetuned = mpl(
                "finetune",
                student,
                "--labeled",
                f"{split}/labeled",
                "--recipe",
                recipe,
                "--out",
                runs / "mpl" / "finetune",
                "--force",
                log=log,
            )
            result["mpl+finetune"] = top1(finetuned, test, log)
            lap("mpl+finetune")
    return {"seed": seed, "top1": result, "seconds": time.perf_counter() - start, "method_seconds": seconds, "commands": log}


def table(rows: list[dict]) -> tuple[str, dict]:
    methods = [m for m in (*METHODS[:4], "mpl teacher", "mpl+finetune") if all(m in r["top1"] for r in rows)]
    seeds = [r["seed"] for r in rows]
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |", "|---|" + "---:|" * (len(seeds) + 1)]
    summary = {}
    for m in methods:
        values = [r["top1"][m] for r in rows]
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[m] = {"mean": mean, "std": std, "values": values}
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {mean:.3f} ± {std:.3f} |")
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split/training seeds (default 0 1 2)")
    p.add_argument("--out", type=Path, default=Path("runs/digits_benchmark"), help="work folder (relative to the repo root)")
    p.add_argument("--jobs", type=int, default=2, help="seeds run in parallel (one process each; default 2 = 2 cores)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--json", type=Path, default=None, help="results file (default OUT/results.json)")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for every mpl train (repeatable)")
    args = p.parse_args(argv)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    out = args.out if args.out.is_absolute() else REPO / args.out
    start = time.perf_counter()
    log: list[str] = []
    mpl("data", "import", "digits", "--out", out / "data" / "all", "--seed", "0", "--force", log=log)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda s: one_seed(s, out, args.sets, methods), args.seeds))
    text, summary = table(rows)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    command = "python recipes/digits_benchmark.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command.strip(),
        "recipe": RECIPE,
        "seeds": args.seeds,
        "extra_sets": args.sets,
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
    print(f"Digits, 5 labelled images per class, test top-1 on 300 held-out images ({len(rows)} seeds)")
    print(text)
    print(f"wall {seconds:.0f} s, CPU {cpu:.0f} s; results in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

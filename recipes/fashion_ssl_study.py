"""Fashion-MNIST semi-supervised study: MPL against supervised, UDA, FixMatch and the no-feedback control,
tuned on a validation split carved from the training images, through the real `mpl` commands.

    .venv/bin/python recipes/fashion_ssl_study.py --out /work/studies/fashion [--labels 250 40] [--seeds 0 1 2] \\
        [--steps 3000] [--tune-steps 750] [--methods supervised,uda,...] [--idx /usr/share/datasets/fashion-mnist]
    .venv/bin/python recipes/fashion_ssl_study.py --out /work/studies/fashion --report-only [--report-to DIR]

Data: `mpl data import fashion-mnist IDX --part train|test` (60,000 and 10,000 images). Per label count N and
seed S: `mpl data split TRAIN --labeled-per-class N/10 --val-per-class 100 --seed S --keep-hidden-labels`:
N labelled images, a **validation split of 1,000 training images** whose labels are used only to choose
settings and to draw the curves, and the other training images unlabelled (their true labels kept aside
for the pseudo-label accuracy diagnostic only). The 10,000 test images are scored once per final run.

Methods (`recipes/fashion_mnist_N.toml`, same network, augmentation, step budget and data order):
supervised, uda, fixmatch, released (teacher and student without a working feedback: the control),
mpl-hard (the paper: sampled hard labels, taylor h) and mpl-soft (soft labels, exact meta-gradient).

Work, in this order (the most decisive numbers first):
1. per label count (250 first): **tuning** on the first seed — every method gets the SAME number of runs
   (`GRID`: 2 settings each, the recipe's own first), at `--tune-steps` (schedule scaled), each finetuned
   with the recipe's [finetune]; the setting with the best validation top-1 after finetuning is chosen;
   then the **final runs** of that seed at `--steps` with the chosen settings (validation every
   `--eval-every` steps: the curves), each finetuned, and the student, the finetuned student and the
   teacher (two-network methods) scored on the test images;
2. the final runs of the other seeds, seed by seed, both label counts.

Resumable: every unit (one training + its finetuning + its evaluations) is recorded in OUT/results.json
when it finishes and skipped on the next start; an interrupted `mpl train` resumes from its last state.
After every unit OUT/results.md (tables, mean ± std over seeds) and the PNGs are rewritten
(`fashion_ssl_report.py`). Progress and an ETA go to stderr; each command's own log to OUT/logs/.
Do not change `GRID`, the budgets or the recipes while a study folder is in use: `mpl train` refuses to
resume a run whose recipe changed.

Two processes (two cores or machines): copy OUT/results.json into a second folder OUT2 and start the study
there on units the first one will not reach soon (`--labels 250 --seeds 1 2` once 250 is tuned, or a `--methods`
subset); later `--out OUT --merge-from OUT2` adds OUT2's finished units to OUT/results.json (same budgets, and
the same grid for the methods both ran, or it refuses), so OUT skips them; their run folders stay in OUT2. With
`--report-only` it then only rewrites the tables; without, OUT goes on to run its own units.

Candidates (`--methods mpl-hard --set method.pseudo_labels=argmax ...`) run in folders of their own; `--baselines-from
OUT [SCREEN ...]` pairs their goal table with OUT's UDA, FixMatch and `released` finals (a later folder's finals of a
method replace OUT's). `--tune-only` runs the tuning only: a screen of an extra `--set` on the validation split.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_ssl_report import baselines, final_metrics, write_json, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IDX = Path("/usr/share/datasets/fashion-mnist")
LABELS = (250, 40)
METHODS = {
    "supervised": ("method.name=supervised",),
    "uda": ("method.name=uda",),
    "fixmatch": ("method.name=fixmatch",),
    "released": ("method.name=released",),
    # The paper's views, whatever the recipe's: the Fashion-MNIST recipes ship the best screened variant (argmax, weak).
    "mpl-hard": ("method.name=mpl", "method.pseudo_labels=sample", "method.pseudo_label_view=strong"),
    "mpl-soft": ("method.name=mpl", "method.pseudo_labels=soft", "method.pseudo_label_view=strong"),
}
TWO_NETWORKS = ("released", "mpl-hard", "mpl-soft")
# The tuning grid: the same number of settings for every method, the recipe's own value first.
GRID = {
    "supervised": (("student.lr=0.05",), ("student.lr=0.02",)),
    "uda": (("method.uda_weight=1.0",), ("method.uda_weight=4.0",)),
    "fixmatch": (("method.fixmatch_threshold=0.95",), ("method.fixmatch_threshold=0.8",)),
    "released": (("method.uda_weight=1.0",), ("method.uda_weight=4.0",)),
    "mpl-hard": (("method.mpl_weight=1.0",), ("method.mpl_weight=10.0",)),
    "mpl-soft": (("method.mpl_weight=1.0",), ("method.mpl_weight=10.0",)),
}
RELATIVE_COST = {"supervised": 0.3, "mpl-hard": 1.45, "mpl-soft": 1.6, "released": 1.45}  # planning guess until measured


def mpl_command() -> list[str]:
    exe = Path(sys.executable).parent / "mpl"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mpltools"]


class Runner:
    """Runs `mpl` commands one at a time, one torch thread, each command's stderr to OUT/logs/NAME.log.

    `in_process` runs them through `mpltools.api.run` in this process instead (no interpreter start per
    command: the CI replay); a long study uses separate processes, each command isolated from the others.
    """

    def __init__(self, out: Path, in_process: bool = False):
        self.logs, self.in_process = out / "logs", in_process
        self.logs.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, *args, commands: list[str] | None = None) -> str:
        args = [str(a) for a in args]
        if commands is not None:
            commands.append("mpl " + shlex.join(args))
        if self.in_process:
            from mpltools import api
            from mpltools.errors import MplError

            try:
                return api.run(args[0], *args[1:], echo_logs=False).strip()
            except MplError as exc:
                raise RuntimeError(f"mpl {shlex.join(args)} failed (exit {exc.exit_code}): {exc}") from None
        cmd = [*mpl_command(), *args]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(self.logs / f"{name}.log", "a", encoding="utf-8") as err:
            err.write(f"$ {shlex.join(cmd)}\n")
            err.flush()
            r = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            tail = (self.logs / f"{name}.log").read_text(encoding="utf-8")[-2000:]
            raise RuntimeError(f"{shlex.join(cmd)} exited {r.returncode}; log {self.logs / name}.log:\n{tail}")
        return r.stdout.strip()


def budget(recipe: dict, steps: int, eval_every: int, log_every: int) -> list[str]:
    """The recipe's schedule at `steps` steps: warm-up, wait and UDA ramp scaled by steps / the recipe's steps."""
    scale = steps / recipe["schedule"]["steps"]
    return [
        f"schedule.steps={steps}",
        f"teacher.warmup_steps={round(recipe['teacher']['warmup_steps'] * scale)}",
        f"student.warmup_steps={round(recipe['student']['warmup_steps'] * scale)}",
        f"student.wait_steps={round(recipe['student']['wait_steps'] * scale)}",
        f"method.uda_ramp_steps={round(recipe['method']['uda_ramp_steps'] * scale)}",
        f"eval.every={max(1, min(eval_every, steps))}",
        f"checkpoint.every={max(1, min(eval_every, steps))}",
        f"runtime.log_every={max(1, min(log_every, steps))}",
        "runtime.threads=1",
    ]


def _complete(folder: Path) -> bool:
    return all((folder / p / "manifest.json").is_file() for p in ("labeled", "unlabeled", "val"))


def import_data(run: Runner, out: Path, idx: Path) -> dict:
    """Imports both parts of Fashion-MNIST once (skipped when they exist); returns their folders."""
    data = {part: out / "data" / part for part in ("train", "test")}
    for part, folder in data.items():
        if not (folder / "manifest.json").is_file():
            run(f"import-{part}", "data", "import", "fashion-mnist", idx, "--part", part, "--out", folder, "--seed", 0, "--force")
    return data


def split(run: Runner, data: dict, n: int, seed: int, val_per_class: int) -> Path:
    """The split of N labels and SEED (made the first time it is needed): labeled/, unlabeled/, val/, hidden labels."""
    folder = data["train"].parent / f"labels{n}" / f"seed{seed}"
    if not _complete(folder) or not (folder / "unlabeled_hidden_labels.json").is_file():
        run(f"split-{n}-{seed}", "data", "split", data["train"], "--labeled-per-class", n // 10, "--val-per-class",
            val_per_class, "--seed", seed, "--keep-hidden-labels", "--out", folder, "--force")  # fmt: skip
    return folder


def unit_key(n: int, seed: int, phase: str, method: str, setting: int) -> str:
    return f"{n}/seed{seed}/{phase}/{method}/{setting}"


def run_unit(run: Runner, args, data: dict, n: int, seed: int, phase: str, method: str, setting: int) -> dict:
    """One training (+ finetune, + test evaluations for a final run); returns its record."""
    recipe_path = REPO / "recipes" / f"fashion_mnist_{n}.toml"
    recipe = tomllib.loads(recipe_path.read_text(encoding="utf-8"))
    split_folder = split(run, data, n, seed, args.val_per_class)
    steps = args.tune_steps if phase == "tune" else args.steps
    every = steps if phase == "tune" else args.eval_every
    sets = [
        f'data.labeled="{split_folder}/labeled"',
        f'data.unlabeled="{split_folder}/unlabeled"',
        f'data.val="{split_folder}/val"',
    ]
    sets += [*budget(recipe, steps, every, args.log_every), *METHODS[method], *GRID[method][setting], *args.sets]
    folder = args.out / "runs" / f"labels{n}" / f"seed{seed}" / phase / f"{method}-{setting}"
    name = unit_key(n, seed, phase, method, setting).replace("/", "-")
    commands: list[str] = []
    start = time.perf_counter()
    student = run(name, "train", recipe_path, *[a for s in sets for a in ("--set", s)], "--seed", seed, "--out", folder,
                  commands=commands)  # fmt: skip
    trained = time.perf_counter()
    more = ["--set", f"finetune.steps={args.finetune_steps}"] if args.finetune_steps else []
    finetuned = run(name, "finetune", student, "--labeled", f"{split_folder}/labeled", "--recipe", recipe_path,
                    "--val", f"{split_folder}/val", *more, "--out", folder / "finetune", commands=commands)  # fmt: skip
    record = {
        "labels": n,
        "seed": seed,
        "phase": phase,
        "method": method,
        "setting": setting,
        "sets": list(GRID[method][setting]),
        "steps": steps,
        "run": str(folder),
        "val_top1": final_metrics(folder).get("val/student_top1"),
        "val_top1_finetuned": final_metrics(folder / "finetune").get("val/student_top1"),
        "train_seconds": trained - start,
    }
    if phase == "final":
        test = data["test"]

        def top1(checkpoint) -> float:
            return float(json.loads(run(name, "eval", checkpoint, "--data", test, "--json", commands=commands))["top1"])

        record["test_top1"] = top1(student)
        record["test_top1_finetuned"] = top1(finetuned)
        if method in TWO_NETWORKS:
            record["test_top1_teacher"] = top1(folder / "teacher.safetensors")
    record.update(seconds=time.perf_counter() - start, commands=commands)
    return record


def chosen_setting(units: dict, n: int, seed: int, method: str) -> int | None:
    """The tuning run with the best validation top-1 after finetuning (the first on a tie); None until all ran."""
    tuned = [units.get(unit_key(n, seed, "tune", method, i)) for i in range(len(GRID[method]))]
    if any(u is None for u in tuned):
        return None
    scores = [u["val_top1_finetuned"] for u in tuned]
    return scores.index(max(scores))


def plan(args) -> list[tuple]:
    """(labels, seed, phase, method, setting or None = the chosen one) in the order they run.

    Tuning runs on `args.tune_seed` (the first seed of the study's first start, kept in results.json).
    """
    chosen = None if args.tune_steps else 0
    first = [s for s in args.seeds if s == args.tune_seed]
    units = []
    for n in args.labels:
        if args.tune_steps:
            units += [(n, args.tune_seed, "tune", m, i) for m in args.methods for i in range(len(GRID[m]))]
        units += [(n, s, "final", m, chosen) for s in first for m in args.methods]
    rest = [s for s in args.seeds if s != args.tune_seed]
    units += [(n, s, "final", m, chosen) for s in rest for n in args.labels for m in args.methods]
    return [u for u in units if u[2] == "tune"] if args.tune_only else units


def eta(units: dict, todo: list[tuple], args) -> float:
    """Seconds left: remaining steps x the measured seconds per step of each method (a planning guess before)."""
    rates: dict[str, list[float]] = {}
    for u in units.values():
        rates.setdefault(u["method"], []).append(u["seconds"] / u["steps"])
    measured = {m: sum(v) / len(v) for m, v in rates.items()}
    uda = measured.get("uda") or next(iter(measured.values()), None)
    left = 0.0
    for _, _, phase, method, _ in todo:
        steps = args.tune_steps if phase == "tune" else args.steps
        rate = measured.get(method) or (uda * RELATIVE_COST.get(method, 1.0) if uda else 0.2 * RELATIVE_COST.get(method, 1.0))
        left += steps * rate
    return left


def _done(units: dict, unit: tuple, tune_seed: int) -> bool:
    n, seed, phase, method, setting = unit
    if setting is None:
        setting = chosen_setting(units, n, tune_seed, method)
    return setting is not None and unit_key(n, seed, phase, method, setting) in units


MERGE_SAME = ("tune_seed", "grid", "steps", "tune_steps", "val_per_class", "extra_sets")


def merge(report: dict, folders: list[Path]) -> int:
    """Add the units of other study folders' results.json that `report` lacks; their settings must be the same
    (a unit already in `report` is kept). Returns the number added; exits with an error naming a differing setting."""
    added = 0
    for folder in folders:
        other = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        for key in MERGE_SAME:
            if key not in report or key not in other:
                continue
            mine, theirs = report[key], other[key]
            if key == "grid":  # a --methods subset records its methods only
                mine, theirs = ({m: g[m] for m in set(mine) & set(theirs)} for g in (mine, theirs))
            if mine != theirs:
                sys.exit(
                    f"fashion_ssl_study.py: {folder}/results.json has {key}={theirs!r}, this study "
                    f"{mine!r}; only studies with the same settings merge."
                )
        if "grid" in other:
            report["grid"] = {**other["grid"], **report.get("grid", {})}
        commands = report.setdefault("merged_commands", [])
        for command in [other.get("command"), *other.get("merged_commands", [])]:
            if command and command != report.get("command") and command not in commands:
                commands.append(command)
        for key, unit in other["units"].items():
            if key not in report["units"]:
                report["units"][key] = unit
                added += 1
    return added


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="study folder (results.json, results.md, PNGs, runs, data)")
    p.add_argument("--labels", type=int, nargs="+", default=list(LABELS), help="label counts, in order (default 250 40)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split/training seeds; the first is tuned on")
    p.add_argument("--steps", type=int, default=3000, help="steps of every final run (default 3000, the recipes')")
    p.add_argument("--tune-steps", type=int, default=750, help="steps of every tuning run; 0 = no tuning (default 750)")
    p.add_argument(
        "--eval-every",
        type=int,
        default=250,
        help="validation every N steps of a final run, a multiple of --log-every (default 250)",
    )
    p.add_argument("--log-every", type=int, default=50, help="metrics and diagnostics every N steps (default 50)")
    p.add_argument("--finetune-steps", type=int, default=0, help="finetuning steps (default 0: the recipe's [finetune])")
    p.add_argument("--tune-only", action="store_true", help="run the tuning units only (a screen of extra --set)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument(
        "--val-per-class", type=int, default=100, help="validation images per class carved from training (default 100)"
    )
    p.add_argument("--idx", type=Path, default=IDX, help=f"folder with the Fashion-MNIST IDX files (default {IDX})")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for every mpl train")
    p.add_argument("--in-process", action="store_true", help="run the mpl commands in this process (CI replay)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the tables and PNGs from OUT")
    p.add_argument("--report-to", type=Path, default=None, help="folder for results.md and the PNGs (default OUT)")
    p.add_argument(
        "--merge-from",
        type=Path,
        nargs="+",
        default=[],
        help="add the finished units of these study folders (then run OUT's units, unless --report-only)",
    )
    p.add_argument(
        "--baselines-from",
        type=Path,
        nargs="+",
        default=[],
        help="goal table against the UDA, FixMatch and released finals of these study folders (a later one's finals of a method replace an earlier one's)",
    )
    args = p.parse_args(argv)
    args.methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if set(args.methods) - set(METHODS):
        p.error(f"unknown method(s) {sorted(set(args.methods) - set(METHODS))}; choose from {', '.join(METHODS)}")
    if set(args.labels) - set(LABELS):
        p.error(f"no recipe for {sorted(set(args.labels) - set(LABELS))} labels; choose from 250, 40")
    if args.tune_only and not args.tune_steps:
        p.error("--tune-only needs tuning runs (--tune-steps > 0)")
    if args.eval_every % args.log_every:
        p.error("--eval-every must be a multiple of --log-every (validation runs on logging steps)")
    args.out = args.out.resolve()
    results = args.out / "results.json"
    report = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {"units": {}}
    report_to = (args.report_to or args.out).resolve()
    args.tune_seed = report.setdefault("tune_seed", args.seeds[0])
    if args.merge_from:
        added = merge(report, args.merge_from)
        write_json(results, report)
        print(f"[study] merged {added} unit(s) from {', '.join(map(str, args.merge_from))}", file=sys.stderr, flush=True)
    if args.baselines_from:
        report["baselines"] = baselines(report, args.baselines_from)
        write_json(results, report)
    if args.report_only:
        print(write_report(report, args.out, report_to, GRID))
        write_json(results, report)  # with the summary and the traces
        return 0
    if not (args.idx / "train-images-idx3-ubyte.gz").exists() and not (args.idx / "train-images-idx3-ubyte").exists():
        p.error(f"{args.idx}: no Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist, or pass --idx FOLDER)")
    run = Runner(args.out, args.in_process)
    report.update(command="python recipes/fashion_ssl_study.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                  grid={**report.get("grid", {}), **{m: [list(s) for s in GRID[m]] for m in args.methods}}, steps=args.steps,
                  tune_steps=args.tune_steps, val_per_class=args.val_per_class, extra_sets=args.sets)  # fmt: skip
    data = import_data(run, args.out, args.idx.resolve())
    units, todo = report["units"], plan(args)
    start, total = time.perf_counter(), len(todo)
    while todo:
        n, seed, phase, method, setting = todo.pop(0)
        if setting is None:
            setting = chosen_setting(units, n, args.tune_seed, method)
        key = unit_key(n, seed, phase, method, setting)
        if key in units:
            continue
        left = [(n, seed, phase, method, setting), *(t for t in todo if not _done(units, t, args.tune_seed))]
        print(f"[study] {key}: {' '.join(GRID[method][setting])} ({total - len(left)}/{total} units done; "
              f"ETA {_hours(eta(units, left, args))})", file=sys.stderr, flush=True)  # fmt: skip
        units[key] = run_unit(run, args, data, n, seed, phase, method, setting)
        write_json(results, report)
        write_report(report, args.out, report_to, GRID)  # also adds the unit's trace
        write_json(results, report)
        u = units[key]
        print(f"[study] {key} done in {u['seconds']:.0f} s: val {u['val_top1']:.3f} -> finetuned {u['val_top1_finetuned']:.3f}"
              + (f"; test {u['test_top1']:.3f} -> {u['test_top1_finetuned']:.3f}" if phase == "final" else ""),
              file=sys.stderr, flush=True)  # fmt: skip
    text = write_report(report, args.out, report_to, GRID)
    write_json(results, report)
    print(text)
    print(f"[study] all {len(units)} units done ({_hours(time.perf_counter() - start)} this session)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fashion-MNIST semi-supervised study (issue 12): every method of the digits benchmark and the
feedback-only variants of the feedback study, on the full Fashion-MNIST, through the real `mpl` commands.

    .venv/bin/python recipes/fashion_study.py [--labels 40 250] [--seeds 0 1 2] [--steps 200] \\
        [--idx /usr/share/datasets/fashion-mnist] [--out runs/fashion_study]

Data: `mpl data import fashion-mnist IDX --part train` (60,000 images) and `--part test` (the
10,000 test images: the held-out set of every number here). Per label count N (4 or 25 per class)
and seed S: `mpl data split TRAIN --labeled-per-class N/10 --val-per-class 0 --seed S` (the other
training images are the unlabelled set), then with `recipes/fashion_mnist_N.toml` at a short step
budget (`--steps`, warm-up/wait/UDA ramp scaled like the feedback study, no evaluation during
training; at `--width` 8 and `--ratio` 3 by default, the CPU budget, see recipes/README.md):

- supervised, pseudo-label, uda, mpl (+ its teacher), mpl+finetune: `digits_benchmark.one_seed`;
- feedback-only MPL (teacher without supervised and UDA loss): fo-soft, fo-dot, fo-taylor,
  fo-released (the no-feedback control) and fo-flipped (sign-flipped ablation), the variants and
  diagnostics of `feedback_study.py`.

Every number is `mpl eval --json` top-1 of the final checkpoint on the 10,000 test images. Prints
markdown tables (mean ± std over the seeds, wall seconds per run) and writes OUT/results.json after
every seed, so an interrupted study keeps what it finished. `--set` goes to every `mpl train`,
`--fo-set` to the feedback-only runs only.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_benchmark import METHODS, REPO, mpl, one_seed, top1  # noqa: E402
from feedback_study import FEEDBACK_ONLY, VARIANTS, budget, diag_table, diagnostics  # noqa: E402

LABELS = (40, 250)
PAPER_LABELS = ("method.pseudo_labels=sample", "method.pseudo_label_view=strong")
IDX = Path("/usr/share/datasets/fashion-mnist")


def recipe_for(labels: int) -> str:
    return f"recipes/fashion_mnist_{labels}.toml"


def feedback_only(
    seed: int, out: Path, recipe: str, test: str, extra: list[str], fo_extra: list[str], variants: tuple[str, ...]
) -> dict:
    """The feedback-only variants on the split one_seed made in OUT/data/seedS."""
    log: list[str] = []
    split = out / "data" / f"seed{seed}"
    data = [f'data.labeled="{split}/labeled"', f'data.unlabeled="{split}/unlabeled"', f'data.val="{test}"']
    result, diag, seconds = {}, {}, {}
    for name in variants:
        start = time.perf_counter()
        sets = [*data, *extra, *FEEDBACK_ONLY, *VARIANTS[name], *fo_extra]
        run = out / "runs" / f"seed{seed}" / name
        student = mpl("train", recipe, *[a for s in sets for a in ("--set", s)], "--seed", seed, "--out", run, "--force", log=log)
        result[name] = top1(student, test, log)
        diag[name] = diagnostics(run)
        seconds[name] = time.perf_counter() - start
    return {"top1": result, "diagnostics": diag, "method_seconds": seconds, "commands": log}


def table(rows: list[dict], names: list[str]) -> tuple[str, dict]:
    """Markdown: top-1 per seed, mean ± std and the mean wall seconds of one run of the method."""
    seeds = [r["seed"] for r in rows]
    lines = [
        "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std | wall s/run |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    summary = {}
    for m in names:
        values = [r["top1"][m] for r in rows]
        mean, std = statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
        secs = [r["method_seconds"][m] for r in rows if m in r["method_seconds"]]
        wall = statistics.fmean(secs) if secs else None
        summary[m] = {"mean": mean, "std": std, "values": values, "wall_seconds": wall}
        cell = f"{wall:.0f}" if wall is not None else "(with mpl)"
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {mean:.3f} ± {std:.3f} | {cell} |")
    return "\n".join(lines), summary


def study_tables(rows: list[dict], variants: tuple[str, ...]) -> tuple[str, dict]:
    names = [m for m in (*METHODS[:4], "mpl teacher", "mpl+finetune", *VARIANTS) if rows and all(m in r["top1"] for r in rows)]
    text, summary = table(rows, names)
    done = tuple(v for v in variants if rows and all(v in r["diagnostics"] for r in rows))
    return (text + "\n\n" + diag_table(rows, done) if done else text), summary


def write_json(target: Path, report: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def _subset(text: str, allowed, what: str, p: argparse.ArgumentParser) -> tuple[str, ...]:
    if text == "none":
        return ()
    chosen = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = set(chosen) - set(allowed)
    if unknown:
        p.error(f"unknown {what} {sorted(unknown)}; choose from {', '.join(allowed)} or 'none'")
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, nargs="+", default=list(LABELS), help="label counts, 40 and/or 250")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split/training seeds (default 0 1 2)")
    p.add_argument("--steps", type=int, default=200, help="training steps of every run (default 200)")
    p.add_argument("--width", type=int, default=8, help="small_cnn width (recipe: 32; default 8, sized for a shared CPU)")
    p.add_argument("--ratio", type=int, default=3, help="data.unlabeled_ratio (recipe: 7; default 3, sized for a shared CPU)")
    p.add_argument("--idx", type=Path, default=IDX, help=f"folder with the Fashion-MNIST IDX files (default {IDX})")
    p.add_argument("--out", type=Path, default=Path("runs/fashion_study"), help="work folder (relative to the repo root)")
    p.add_argument("--baselines", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}, or 'none'")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}, or 'none'")
    p.add_argument("--set", dest="sets", action="append", default=[], help="extra --set for every mpl train")
    p.add_argument("--fo-set", dest="fo_sets", action="append", default=[], help="extra --set for the feedback-only runs")
    p.add_argument("--json", type=Path, default=None, help="results file (default OUT/results.json)")
    args = p.parse_args(argv)
    baselines = _subset(args.baselines, METHODS, "method(s)", p)
    variants = _subset(args.variants, tuple(VARIANTS), "variant(s)", p)
    bad = sorted(set(args.labels) - set(LABELS))
    if bad:
        p.error(f"no recipe for {bad} labels; choose from {', '.join(map(str, LABELS))}")
    if not (args.idx / "train-images-idx3-ubyte.gz").exists() and not (args.idx / "train-images-idx3-ubyte").exists():
        p.error(f"{args.idx}: no Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist, or pass --idx FOLDER)")
    out = args.out if args.out.is_absolute() else REPO / args.out
    idx = args.idx if args.idx.is_absolute() else Path.cwd() / args.idx
    # No evaluation during training (data.val=""): the test images are scored once, by mpl eval, at the end.
    # PAPER_LABELS: this study ran the recipes when they shipped the paper's pseudo labels; they now ship the
    # variant screened by fashion_ssl_study.py, so its runs pin the paper's (the feedback-only variants override).
    extra = [
        *PAPER_LABELS,
        *budget(args.steps),
        "eval.every=0",
        'data.val=""',
        f"model.kwargs.width={args.width}",
        f"data.unlabeled_ratio={args.ratio}",
        *args.sets,
    ]
    target = args.json or out / "results.json"
    start = time.perf_counter()
    log: list[str] = []
    train_data, test = out / "data" / "train", out / "data" / "test"
    for part, folder in (("train", train_data), ("test", test)):
        mpl("data", "import", "fashion-mnist", idx, "--part", part, "--out", folder, "--seed", "0", "--force", log=log)
    command = "python recipes/fashion_study.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    report = {
        "command": command.strip(),
        "labels": args.labels,
        "seeds": args.seeds,
        "steps": args.steps,
        "extra_sets": extra,
        "fo_sets": args.fo_sets,
        "import": log,
        "import_seconds": time.perf_counter() - start,
        "studies": {},
    }
    texts = {}
    for n in args.labels:
        recipe, base = recipe_for(n), out / f"labels{n}"
        split_args = ("--labeled-per-class", str(n // 10), "--val-per-class", "0")
        rows: list[dict] = []
        for seed in args.seeds:
            row = one_seed(
                seed, base, extra, baselines, recipe=recipe, data_all=train_data, split_args=split_args, test=str(test)
            )
            fo = feedback_only(seed, base, recipe, str(test), extra, args.fo_sets, variants)
            row["top1"].update(fo["top1"])
            row["method_seconds"].update(fo["method_seconds"])
            rows.append({**row, "diagnostics": fo["diagnostics"], "commands": row["commands"] + fo["commands"]})
            texts[n], summary = study_tables(rows, variants)
            report["studies"][str(n)] = {"recipe": recipe, "summary": summary, "per_seed": rows}
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            report.update(wall_seconds=time.perf_counter() - start, cpu_seconds=usage.ru_utime + usage.ru_stime)
            write_json(target, report)
            print(
                f"[fashion_study] {n} labels, seed {seed} done ({row['seconds'] + sum(fo['method_seconds'].values()):.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    for n in args.labels:
        print(
            f"Fashion-MNIST, {n} labels ({n // 10} per class), {args.steps} steps, top-1 on the 10,000 test images "
            f"({len(args.seeds)} seeds)"
        )
        print(texts[n])
        print()
    print(f"wall {report['wall_seconds']:.0f} s, CPU {report['cpu_seconds']:.0f} s; results in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

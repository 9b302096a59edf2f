"""Tables and pictures of `fashion_ssl_study.py`, from its results.json and its runs' metrics.jsonl.

`write_report(report, out, folder, grid)` writes folder/results.md (markdown tables: test top-1 mean ± std over
the seeds that finished, before and after finetuning; the tuning runs on the validation split; the
feedback's signal-to-noise in the MPL runs) and two PNGs per label count: `curves_N.png` (validation
top-1 against the step, per method, mean over the seeds) and `pl_accuracy_N.png` (the accuracy of the
pseudo labels on the unlabelled images' hidden labels against the step, MPL against `released`). Run
folders that are still training are drawn too, so the pictures fill in as the study runs.

A finished unit keeps a `trace` in results.json: the columns of its metrics.jsonl that the report reads
(`TRACE_KEYS`), so the tables and pictures can be redrawn from results.json alone (a snapshot, or a study whose
run folders are gone). Units that finished before traces were kept and whose run folders are gone are counted
in results.md: they are missing from the diagnostics tables and the pictures, not from the test top-1 tables.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

PL_METHODS = ("released", "mpl-hard", "mpl-soft", "fixmatch")


def write_json(target: Path, data: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def records(run: Path) -> list[dict]:
    """The lines of RUN/metrics.jsonl (a partly written last line is skipped)."""
    out = []
    path = Path(run) / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else ():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


TRACE_KEYS = ("val/student_top1", "diag/pl_accuracy", "diag/pl_agreement", "feedback/h", "diag/t_grad_norm_mpl",
              "diag/t_grad_norm_aux", "diag/cos_mpl_aux")  # fmt: skip


def trace(rows: list[dict]) -> dict:
    """The report's columns of metrics.jsonl lines, as {"step": [...], "final": [...], key: [value or None]}
    (5 significant digits); keys no line has are left out."""
    rows = [r for r in rows if any(k in r for k in TRACE_KEYS)]
    keys = [k for k in TRACE_KEYS if any(k in r for r in rows)]
    out = {"step": [r["step"] for r in rows], "final": [bool(r.get("final")) for r in rows]}
    out.update({k: [float(f"{r[k]:.5g}") if k in r else None for r in rows] for k in keys})
    return out


def untrace(columns: dict) -> list[dict]:
    """The lines of a `trace` back (only the keys they had)."""
    keys = [k for k in columns if k not in ("step", "final")]
    rows = []
    for i, step in enumerate(columns["step"]):
        row = {"step": step, **({"final": True} if columns["final"][i] else {})}
        rows.append(row | {k: columns[k][i] for k in keys if columns[k][i] is not None})
    return rows


def unit_records(unit: dict) -> list[dict]:
    """A finished unit's metrics lines, from its trace (`write_report` stores every trace it can first); [] without."""
    return untrace(unit["trace"]) if "trace" in unit else []


def store_traces(units: dict) -> list[str]:
    """Adds a trace to each finished unit without one whose run folder still has its metrics; returns the keys of
    the units with neither (their diagnostics are lost)."""
    lost = []
    for key, u in units.items():
        if "trace" not in u:
            rows = [r for r in records(Path(u["run"])) if "step" in r] if u.get("run") else []
            if rows:
                u["trace"] = trace(rows)
            else:
                lost.append(key)
    return lost


def final_metrics(run: Path) -> dict:
    """The run's end-of-training evaluation record (empty without one)."""
    finals = [r for r in records(run) if r.get("final")]
    return finals[-1] if finals else {}


def _stat(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} ({len(values)} seeds)"


def _summary(units: list[dict]) -> dict:
    out = {}
    for key in ("test_top1", "test_top1_finetuned", "test_top1_teacher"):
        values = [u[key] for u in units if key in u]
        if values:
            std = statistics.stdev(values) if len(values) > 1 else None
            out[key] = {"mean": statistics.fmean(values), "std": std, "values": values, "seeds": [u["seed"] for u in units]}
    return out


def results_table(units: dict, n: int, grid: dict) -> tuple[str, dict]:
    finals = [u for u in units.values() if u["labels"] == n and u["phase"] == "final"]
    lines = [
        "| method | setting | student | + finetune | teacher | per seed: student → + finetune |",
        "|---|---|---:|---:|---:|---|",
    ]
    summary = {}
    for m in grid:
        rows = sorted((u for u in finals if u["method"] == m), key=lambda u: u["seed"])
        if not rows:
            continue
        summary[m] = _summary(rows)
        per_seed = ", ".join(f"s{u['seed']}: {u['test_top1']:.3f} → {u['test_top1_finetuned']:.3f}" for u in rows)
        teacher = [u["test_top1_teacher"] for u in rows if "test_top1_teacher" in u]
        lines.append(
            f"| {m} | {' '.join(rows[0]['sets'])} | {_stat([u['test_top1'] for u in rows])} | "
            f"{_stat([u['test_top1_finetuned'] for u in rows])} | {_stat(teacher) if teacher else '–'} | {per_seed} |"
        )
    return ("\n".join(lines) if summary else "No final run has finished yet."), summary


BASELINES = ("uda", "fixmatch", "released")  # the goal table's comparisons


def goal_table(units: dict, n: int, baselines: dict | None = None) -> str:
    """Each MPL variant after finetuning against the better (by mean) of UDA and FixMatch and against `released`,
    paired by seed on the seeds all of them finished (listed per seed; the "+ finetune" mean is over all the MPL
    variant's seeds): the issue's bar is +1.0 point over each, mean of 3 seeds.
    `baselines`: final units of another study folder (a candidate's folder runs MPL only) filling in those methods."""
    final = {}
    for u in [*units.values(), *(baselines or {}).values()]:
        if u["labels"] == n and u["phase"] == "final":
            final.setdefault((u["method"], u["seed"]), u["test_top1_finetuned"])
    lines = []
    for m in ("mpl-hard", "mpl-soft"):
        seeds = sorted(s for (k, s) in final if k == m)
        if not seeds:
            continue
        cells, per_seed = [], []
        for group in (("uda", "fixmatch"), ("released",)):
            ran = [b for b in group if any(k == b for (k, _) in final)]
            common = [s for s in seeds if ran and all((b, s) in final for b in ran)]  # seeds every one of them finished
            if not common:
                cells.append("– | –")
                continue
            means = {b: statistics.fmean(final[b, s] for s in common) for b in ran}
            b = max(means, key=means.get)
            diffs = [final[m, s] - final[b, s] for s in common]
            spread = f" ± {100 * statistics.stdev(diffs):.1f}" if len(diffs) > 1 else ""
            cells.append(f"{b} {means[b]:.3f} | {100 * statistics.fmean(diffs):+.1f}{spread}")
            per_seed.append(f"{b}: " + ", ".join(f"s{s} {100 * d:+.1f}" for s, d in zip(common, diffs)))
        if not per_seed:  # neither baseline ran (a candidate's folder)
            continue
        mine = statistics.fmean(final[m, s] for s in seeds)
        lines.append(f"| {m} | {len(seeds)} | {mine:.3f} | {' | '.join(cells)} | {'; '.join(per_seed)} |")
    if not lines:
        return ""
    head = [
        "| MPL variant | seeds | + finetune | best of UDA / FixMatch | difference (points) | released | difference (points) "
        "| per seed (points) |",
        "|---|---:|---:|---|---:|---|---:|---|",
    ]
    return "\n".join(head + lines)


def baselines(report: dict, folders: list[Path]) -> dict:
    """The final UDA, FixMatch and `released` units of study FOLDERS (same budget; a candidate's own --set may
    differ), for a candidate folder's goal table. A later folder's finals of a method at a label count replace an
    earlier folder's (a baseline re-run with the setting that won its screen). Exits with an error naming a differing
    budget, or a folder without any of those finals."""
    keep, sources = {}, []
    for folder in folders:
        other = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        for key in ("steps", "val_per_class"):  # the finals and the split (a candidate may skip tuning)
            if key in report and key in other and report[key] != other[key]:
                sys.exit(f"fashion_ssl_study.py: {folder}/results.json has {key}={other[key]!r}, this study "
                         f"{report[key]!r}; baselines must come from a study with the same budget.")  # fmt: skip
        finals = {k: u for k, u in other["units"].items() if u["phase"] == "final" and u["method"] in BASELINES}
        if not finals:
            sys.exit(f"fashion_ssl_study.py: {folder}/results.json has no final run of {', '.join(BASELINES)}; "
                     "pass a study folder whose baselines have finished.")  # fmt: skip
        took = sorted({(u["method"], u["labels"]) for u in finals.values()})
        keep = {k: u for k, u in keep.items() if (u["method"], u["labels"]) not in took}
        keep.update(finals)
        sources.append({"command": other.get("command", str(folder)), "finals": [f"{m} at {n}" for m, n in took]})
    return {"command": sources[0]["command"], "sources": sources, "units": keep}


def tuning_table(units: dict, n: int, grid: dict) -> str:
    tuned = [u for u in units.values() if u["labels"] == n and u["phase"] == "tune"]
    if not tuned:
        return ""
    lines = [
        "| method | setting | steps | val top-1 | val + finetune | pseudo-label accuracy | chosen |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for m in grid:
        rows = sorted((u for u in tuned if u["method"] == m), key=lambda u: u["setting"])
        scores = [u["val_top1_finetuned"] for u in rows]
        best = rows[scores.index(max(scores))]["setting"] if len(rows) == len(grid[m]) else None  # the first on a tie
        for u in rows:
            mark = "**yes**" if u["setting"] == best else ""
            pl = late_pseudo_labels(unit_records(u)) if m in PL_METHODS else None
            lines.append(
                f"| {m} | {' '.join(u['sets'])} | {u['steps']} | {u['val_top1']:.3f} | {u['val_top1_finetuned']:.3f} "
                f"| {'–' if pl is None else f'{pl[1]:.3f}'} | {mark} |"
            )
    return "\n".join(lines)


def late_pseudo_labels(lines: list[dict]) -> tuple[int, float, float] | None:
    """(logging steps, pseudo-label accuracy, student agreement): means over the logging steps in the last third of
    the run (what the student learnt from once the curves settled); None without hidden-label diagnostics."""
    rows = [r for r in lines if "diag/pl_accuracy" in r and not r.get("final")]
    if not rows:
        return None
    late = [r for r in rows if r["step"] > 2 * rows[-1]["step"] / 3] or rows
    return (
        len(late),
        statistics.fmean(r["diag/pl_accuracy"] for r in late),
        statistics.fmean(r["diag/pl_agreement"] for r in late),
    )


def feedback_figures(lines: list[dict]) -> dict | None:
    """h's mean, std and signal-to-noise over the logging steps after the wait, and the MPL share of the teacher's gradient."""
    rs = [r for r in lines if "feedback/h" in r and not r.get("final")]
    hs = [r["feedback/h"] for r in rs if r["feedback/h"] != 0.0]
    if len(hs) < 2:
        return None
    mean, std = statistics.fmean(hs), statistics.stdev(hs)

    def med(key):
        v = [r[key] for r in rs if key in r]
        return statistics.median(v) if v else None

    ratios = [r["diag/t_grad_norm_mpl"] / r["diag/t_grad_norm_aux"] for r in rs if r.get("diag/t_grad_norm_aux")]
    return {
        "n": len(hs),
        "h_mean": mean,
        "h_std": std,
        "h_snr": abs(mean) / std if std else None,
        "h_positive": sum(h > 0 for h in hs) / len(hs),
        "t_grad_norm_mpl": med("diag/t_grad_norm_mpl"),
        "t_grad_norm_aux": med("diag/t_grad_norm_aux"),
        "mpl_share": statistics.median(ratios) if ratios else None,
        "cos_mpl_aux": med("diag/cos_mpl_aux"),
    }


def _g(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def final_runs(out: Path, units: dict, n: int, method: str) -> list[tuple[str, list[dict]]]:
    """(name, metrics lines) of the final runs of `method` at `n` labels: the finished units (their trace, or the run
    folder they name, also one merged from another study folder) and the runs under OUT/runs still training."""
    runs = {}
    for u in units.values():
        if u["phase"] == "final" and u["labels"] == n and u["method"] == method:
            runs[f"seed{u['seed']}/{method}-{u['setting']}"] = unit_records(u)
    for run in (out / "runs" / f"labels{n}").glob(f"seed*/final/{method}-*"):
        runs.setdefault(f"{run.parent.parent.name}/{run.name}", records(run))
    return [(name, lines) for name, lines in sorted(runs.items()) if lines]


def feedback_table(out: Path, units: dict, n: int) -> str:
    lines = [
        "| run | logged steps | mean h | std h | \\|mean\\|/std | h > 0 | median ‖g_mpl‖ | median ‖g_aux‖ | median ‖g_mpl‖/‖g_aux‖ | median cos(g_mpl, g_aux) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in [r for m in ("mpl-hard", "mpl-soft") for r in final_runs(out, units, n, m)]:
        f = feedback_figures(run)
        if f:
            lines.append(
                f"| {name} | {f['n']} | {_g(f['h_mean'])} | {_g(f['h_std'])} | {_g(f['h_snr'])} | "
                f"{f['h_positive']:.2f} | {_g(f['t_grad_norm_mpl'])} | {_g(f['t_grad_norm_aux'])} | {_g(f['mpl_share'])} | "
                f"{_g(f['cos_mpl_aux'])} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def pl_table(out: Path, units: dict, n: int) -> str:
    """Per final run: the pseudo labels' accuracy on the hidden labels and the student's agreement with them, mean
    of the logging steps in the last third of the run (what the student learnt from, once the curves settled)."""
    lines = ["| run | logged steps | pseudo-label accuracy | student agrees |", "|---|---:|---:|---:|"]
    for m in PL_METHODS:
        for name, run in final_runs(out, units, n, m):
            pl = late_pseudo_labels(run)
            if pl is not None:
                lines.append(f"| {name} | {pl[0]} | {pl[1]:.3f} | {pl[2]:.3f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _series(runs: list[tuple[str, list[dict]]], key: str) -> dict[int, float]:
    """Mean over the runs that logged `key` at each step."""
    by_step: dict[int, list[float]] = {}
    for _, lines in runs:
        for r in lines:
            if key in r and (key.startswith("val/") or not r.get("final")):  # the end-of-run validation is a curve point
                by_step.setdefault(r["step"], []).append(r[key])
    return {s: statistics.fmean(v) for s, v in sorted(by_step.items())}


def _smooth(values: list[float], k: int = 5) -> list[float]:
    return [statistics.fmean(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def plot(out: Path, units: dict, folder: Path, n: int, methods) -> list[str]:
    """curves_N.png and pl_accuracy_N.png from the final runs' metrics; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, key, which, title in (
        (f"curves_{n}.png", "val/student_top1", methods, "validation top-1 (1,000 carved training images), student"),
        (
            f"pl_accuracy_{n}.png",
            "diag/pl_accuracy",
            [m for m in PL_METHODS if m in methods],
            "pseudo-label accuracy on hidden labels",
        ),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        drawn = 0
        for m in which:
            runs = final_runs(out, units, n, m)
            series = _series(runs, key)
            if not series:
                continue
            ys = list(series.values()) if key.startswith("val/") else _smooth(list(series.values()))
            ax.plot(list(series), ys, label=f"{m} ({len(runs)} run{'s' if len(runs) > 1 else ''})")
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("step")
        ax.set_ylabel("top-1" if key.startswith("val/") else "accuracy (moving mean of 5 logs)")
        ax.set_title(f"Fashion-MNIST, {n} labels: {title}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        tmp = folder / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, folder / name)
        written.append(name)
    return written


def write_report(report: dict, out: Path, folder: Path, grid: dict) -> str:
    """Writes folder/results.md and the PNGs of study folder OUT; returns the markdown. Also stores the summary and
    the finished units' traces in `report`."""
    folder.mkdir(parents=True, exist_ok=True)
    units = report.get("units", {})
    lost = store_traces(units)
    labels = sorted({u["labels"] for u in units.values()}, reverse=True)
    parts = [
        "# Fashion-MNIST semi-supervised study",
        "",
        f"Command: `{report.get('command', '')}`. Test top-1 on the 10,000 test images, mean ± std over the seeds "
        "that finished; tuning on 1,000 images carved from the training set (never the test set).",
    ]
    if report.get("merged_commands"):
        parts += ["", "Units merged from the folders of:", "", *(f"- `{c}`" for c in report["merged_commands"])]
    if report.get("baselines"):
        parts += ["", f"Baselines of the goal table from the folder of: `{report['baselines']['command']}`"]
        for source in report["baselines"].get("sources", [])[1:]:
            parts += [f"- replaced for {', '.join(source['finals'])} labels by the folder of: `{source['command']}`"]
    if lost:
        parts += ["", f"{len(lost)} finished unit(s) have no trace and no run folder left (they finished before results.json "
                  "kept traces): they are in the test top-1 tables, not in the diagnostics tables and pictures; an earlier "
                  f"report of this folder (git history) has them: {', '.join(lost)}."]  # fmt: skip
    report["summary"] = {}
    for n in labels:
        table, summary = results_table(units, n, grid)
        report["summary"][str(n)] = summary
        parts += ["", f"## {n} labels ({n // 10} per class)", "", table]
        goal = goal_table(units, n, report.get("baselines", {}).get("units"))
        if goal:
            parts += ["", "MPL after finetuning against the baselines, paired by seed (the goal: +1.0 point over each, "
                      "mean of 3 seeds):", "", goal]  # fmt: skip
        tuning = tuning_table(units, n, grid)
        if tuning:
            parts += ["", "Tuning (first seed, validation split):", "", tuning]
        fb = feedback_table(out, units, n)
        if fb:
            parts += ["", "Feedback in the final MPL runs (logging steps with h ≠ 0):", "", fb]
        pl = pl_table(out, units, n)
        if pl:
            parts += ["", "Pseudo labels in the final runs, last third (hidden labels, diagnostics only):", "", pl]
        try:
            pictures = plot(out, units, folder, n, list(grid))
        except ImportError:
            pictures = []
            parts += ["", "(matplotlib is not installed: no pictures)"]
        parts += ["", *[f"![{p}]({p})" for p in pictures]]
    text = "\n".join(parts) + "\n"
    tmp = folder / ".results.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, folder / "results.md")
    return text

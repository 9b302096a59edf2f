"""`mpl plot feedback RUN... --out PNG`: what the feedback did, over time, from the `diag/*` keys of metrics.jsonl.

One panel per group of diagnostics, one colour per run (overlaid, labelled like `mpl plot curves`),
one line style per key inside a panel:

* h: mean h and median |h| over each logging window, with the moving-average baseline;
* the fraction of steps with h > 0;
* the teacher's gradient norm of each term of its loss (supervised, UDA, MPL), log scale;
* the cosine between the MPL part of that gradient and the others;
* the spread of the pseudo labels (normalised entropy, largest class fraction);
* their agreement with the student and, with hidden labels, their accuracy;
* validation top-1 of the student and the teacher.

A panel whose keys no run logged is left out (a pseudo-label or supervised run has no h, a run
without hidden labels no pseudo-label accuracy); a run without any `diag/` key is refused, naming
it. The helpers shared with `mpl plot curves` are imported from `mpltools.commands.plot`.
"""

from __future__ import annotations

from pathlib import Path

from mpltools.commands.plot import (
    PANEL_INCHES,
    _check_out,
    _figure,
    _grid,
    _save,
    _series,
    _split_labels,
    _unique_names,
    read_metrics,
)
from mpltools.errors import MplError, UsageError

# (panel name, title, ((metrics key, legend text), ...), y scale, reference line or None), in display order.
FEEDBACK_PANELS = (
    (
        "h",
        "feedback h over each log window",
        (("diag/h_mean", "mean h"), ("diag/h_abs_median", "median |h|"), ("feedback/baseline", "baseline")),
        "linear",
        0.0,
    ),
    ("h_pos_frac", "fraction of steps with h > 0", (("diag/h_pos_frac", "h > 0"),), "linear", 0.5),
    (
        "t_grad_norm",
        "teacher gradient norm by term (log)",
        (("diag/t_grad_norm_sup", "supervised"), ("diag/t_grad_norm_uda", "UDA"), ("diag/t_grad_norm_mpl", "MPL")),
        "log",
        None,
    ),
    (
        "cos_mpl",
        "cosine of the MPL gradient with",
        (("diag/cos_mpl_sup", "supervised"), ("diag/cos_mpl_uda", "UDA"), ("diag/cos_mpl_aux", "sup + UDA")),
        "linear",
        0.0,
    ),
    (
        "pl_spread",
        "pseudo labels: class spread",
        (("diag/pl_entropy_norm", "entropy / log K"), ("diag/pl_max_class_fraction", "largest class fraction")),
        "linear",
        None,
    ),
    (
        "pl_quality",
        "pseudo labels: agreement, accuracy",
        (("diag/pl_agreement", "student agrees"), ("diag/pl_accuracy", "accuracy (hidden labels)")),
        "linear",
        None,
    ),
    ("val_top1", "validation top-1", (("val/student_top1", "student"), ("val/teacher_top1", "teacher")), "linear", None),
)
LINE_STYLES = ("-", "--", ":")


def _has(records: list[dict], key: str) -> bool:
    return any(isinstance(r.get(key), (int, float)) for r in records)


def plan(names: list[str], data: list[list[dict]]) -> tuple[list[dict], list[dict]]:
    """(panels drawn, panels left out): for each drawn panel its keys present in some run and the runs with data."""
    drawn, absent = [], []
    for name, title, keys, scale, _ in FEEDBACK_PANELS:
        present = [key for key, _ in keys if any(_has(records, key) for records in data)]
        if not present:
            absent.append({"panel": name, "keys": [key for key, _ in keys]})
            continue
        runs = [run for run, records in zip(names, data) if any(_has(records, key) for key in present)]
        drawn.append(
            {
                "panel": name,
                "title": title,
                "scale": scale,
                "keys": present,
                "missing_keys": [key for key, _ in keys if key not in present],
                "runs": runs,
            }
        )
    return drawn, absent


def run_feedback(
    runs: list[Path], out: Path, *, labels: str | None = None, smooth: int = 1, dpi: int = 100, force: bool = False
) -> dict:
    """The diagnostics of one or more runs in one PNG; returns a report (the PNG, the runs, the panels drawn and left out)."""
    if not runs:
        raise UsageError("give at least one run folder.")
    out = _check_out(out, force)
    names = _split_labels(labels, len(runs), "labels") or _unique_names([Path(r) for r in runs])
    data = [read_metrics(Path(r)) for r in runs]
    for run, records in zip(runs, data):
        if not records:
            raise MplError(f"{run}: metrics.jsonl holds no logged steps yet; nothing to plot.")
        if not any(k.startswith("diag/") for r in records for k in r):
            raise MplError(
                f"{run}: metrics.jsonl has no diag/* keys, so there is no feedback to draw. They are logged by "
                "runs of `mpl train` made since the diagnostics were added; for the losses and accuracies of "
                "this run use `mpl plot curves`."
            )
    drawn, absent = plan(names, data)
    by_name = {p[0]: p for p in FEEDBACK_PANELS}
    rows, cols = _grid(len(drawn), 3)
    w, h = PANEL_INCHES["curves"]
    fig = _figure(w * cols, h * rows + 0.5, dpi)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    run_handles = {}
    for ax, panel in zip(axes, drawn):
        _, title, keys, scale, ref = by_name[panel["panel"]]
        present = [(key, text) for key, text in keys if key in panel["keys"]]
        style_handles = []
        for j, (key, text) in enumerate(present):
            style = LINE_STYLES[j % len(LINE_STYLES)]
            for i, (name, records) in enumerate(zip(names, data)):
                x, y = _series(records, key, 1 if key.startswith("val/") else smooth)
                if scale == "log":  # a zero norm (a term switched off) cannot be drawn on a log axis
                    keep = y > 0
                    x, y = x[keep], y[keep]
                if not len(x):
                    continue
                markers = dict(marker="o", markersize=3) if len(x) <= 30 else {}
                (line,) = ax.plot(x, y, color=f"C{i % 10}", linestyle=style, linewidth=1.3, **markers)
                run_handles.setdefault(name, line)
            style_handles.append(ax.plot([], [], color="0.3", linestyle=style, label=text)[0])
        if scale == "log" and ax.lines and any(len(line.get_xdata()) for line in ax.lines):
            ax.set_yscale("log")
        if ref is not None:
            ax.axhline(ref, color="0.5", linewidth=0.8, linestyle=":")
        if len(present) > 1:
            ax.legend(handles=style_handles, fontsize=7, frameon=False)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(drawn) :]:
        ax.set_axis_off()
    texts = [name for name in names if name in run_handles]
    # a solid line per run in the figure legend (the line style says which key)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=run_handles[t].get_color(), linewidth=2) for t in texts]
    fig.legend(handles, texts, loc="outside lower center", ncols=max(1, min(len(texts), 4)), fontsize=9, frameon=False)
    if smooth > 1:
        fig.suptitle(f"feedback diagnostics (moving average over {smooth} logged points; not the accuracies)", fontsize=10)
    path = _save(fig, out, force)
    return {
        "out": path,
        "runs": [{"label": n, "path": str(r), "logged_steps": len(d)} for n, r, d in zip(names, runs, data)],
        "panels": drawn,
        "absent": absent,
        "smooth": smooth,
    }

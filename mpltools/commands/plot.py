"""`mpl plot curves RUN...` and `mpl plot regions CKPT... --data SHARDS`: pictures of runs and models.

* curves: learning curves read from each run's `metrics.jsonl` — the losses of both networks, the
  feedback signal h and its moving-average baseline, and the validation top-1 of both networks —
  one panel per quantity, one line per run (labelled by the run folder's name). Quantities that no
  run logged get no panel; a run without them (e.g. a baseline without a teacher, or without
  validation) simply has no line in that panel.
* regions: the decision regions of checkpoints with 2-D inputs (TwoMoon), like the paper's
  Figure 2: the predicted class over a grid spanning the data's bounding box, the data points
  coloured by their true class, the labelled points drawn large with a black edge, one panel per
  checkpoint.

matplotlib is an optional dependency (`pip install 'meta-pseudo-labels[plot]'`), imported only here, with
the Agg canvas (no display needed). The PNG is written atomically and never overwrites an
existing file without `force`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpltools.atomic import atomic_file
from mpltools.errors import MplError, UsageError

# (metrics key, panel title) in display order; the x axis is the training step.
CURVE_PANELS = (
    ("teacher/loss", "teacher loss"),
    ("student/loss", "student loss"),
    ("feedback/h", "feedback h (CE_old - CE_new)"),
    ("feedback/baseline", "baseline of h (moving average)"),
    ("val/student_top1", "validation top-1, student"),
    ("val/teacher_top1", "validation top-1, teacher"),
)
# Dark colours for points / lines per class; the regions use a light tint of the same colour.
# Two classes: red and green as in the paper's Figure 2.
CLASS_COLOURS = ("#c62828", "#2e7d32", "#1565c0", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#4e342e", "#9e9d24", "#37474f")
PANEL_INCHES = {"curves": (4.6, 3.2), "regions": (4.8, 3.4)}


def _figure(width_in: float, height_in: float, dpi: int):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global state, no display)."""
    try:
        import matplotlib
    except ImportError:
        raise MplError(
            "`mpl plot` needs matplotlib, an optional extra: pip install 'meta-pseudo-labels[plot]' (or pip install matplotlib)."
        ) from None
    matplotlib.use("Agg", force=True)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _check_out(out: Path, force: bool) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: `mpl plot` writes PNG files; give a name ending in .png.")
    if out.exists() and not force:
        raise MplError(f"{out} already exists; pass --force to overwrite it, or choose another --out.")
    return out


def _save(fig, out: Path, force: bool) -> str:
    with atomic_file(out, force=force) as tmp:
        fig.savefig(tmp, format="png")
    return str(out)


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _unique_names(paths: list[Path]) -> list[str]:
    """Shortest path suffixes that tell the runs apart (runs/a/mpl and runs/b/mpl -> a/mpl, b/mpl)."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _split_labels(text: str | None, n: int, what: str) -> list[str] | None:
    if text is None:
        return None
    labels = [t.strip() for t in text.split(",")]
    if len(labels) != n:
        raise UsageError(
            f"--{what} has {len(labels)} comma-separated entries but {n} {'run' if what == 'labels' else 'checkpoint'}(s) were given."
        )
    return labels


# ------------------------------------------------------------------------------------------ curves


def read_metrics(run: Path) -> list[dict]:
    """The records of RUN/metrics.jsonl (RUN may also be the metrics file itself)."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise MplError(
            f"{run} has no metrics.jsonl; give a run folder written by `mpl train` or `mpl finetune` "
            "(or the path of its metrics.jsonl)."
        )
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MplError(f"{path}, line {number}: not a JSON object ({exc.msg}); the file is damaged.") from None
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def _series(records: list[dict], key: str, smooth: int) -> tuple[np.ndarray, np.ndarray]:
    points = sorted((r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float)))
    if not points:
        return np.empty(0), np.empty(0)
    x, y = (np.asarray(v, dtype=np.float64) for v in zip(*points))
    if smooth > 1 and len(y) > 1:
        window = min(smooth, len(y))
        y = np.convolve(y, np.ones(window) / window, mode="valid")
        x = x[window - 1 :]
    return x, y


def run_curves(
    runs: list[Path], out: Path, *, labels: str | None = None, smooth: int = 1, dpi: int = 100, force: bool = False
) -> list[str]:
    """Learning curves of one or more runs in one PNG; returns [the PNG's path]."""
    if not runs:
        raise UsageError("give at least one run folder.")
    out = _check_out(out, force)
    names = _split_labels(labels, len(runs), "labels") or _unique_names([Path(r) for r in runs])
    data = [read_metrics(Path(r)) for r in runs]
    for run, records in zip(runs, data):
        if not records:
            raise MplError(f"{run}: metrics.jsonl holds no logged steps yet; nothing to plot.")
    panels = [(key, title) for key, title in CURVE_PANELS if any(key in r for records in data for r in records)]
    if not panels:
        raise MplError(f"none of {', '.join(map(str, runs))} logged any of {', '.join(k for k, _ in CURVE_PANELS)}.")
    rows, cols = _grid(len(panels), 3)
    w, h = PANEL_INCHES["curves"]
    fig = _figure(w * cols, h * rows + 0.5, dpi)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, title) in zip(axes, panels):
        for i, (name, records) in enumerate(zip(names, data)):
            x, y = _series(records, key, 1 if key.startswith("val/") else smooth)
            if len(x):
                style = dict(marker="o", markersize=3) if len(x) <= 30 else {}
                ax.plot(x, y, label=name, color=f"C{i % 10}", linewidth=1.3, **style)
        if key == "feedback/h" or key == "feedback/baseline":
            ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle=":")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    found = {}
    for ax in axes[: len(panels)]:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            found.setdefault(text, handle)
    texts = [name for name in names if name in found]  # legend in the order the runs were given
    fig.legend([found[t] for t in texts], texts, loc="outside lower center", ncols=min(len(texts), 4), fontsize=9, frameon=False)
    if smooth > 1:
        fig.suptitle(f"training curves (losses and h: moving average over {smooth} logged points)", fontsize=10)
    return [_save(fig, out, force)]


# ----------------------------------------------------------------------------------------- regions


def _load_2d_checkpoint(path: Path):
    from mpltools.checkpoint import load_model, read_checkpoint

    _, meta = read_checkpoint(path)  # metadata first: refuse before building a model that cannot be drawn
    shape = list(meta.input_shape or meta.input_spec.get("shape") or [])
    if shape != [2] or meta.input_spec.get("kind") != "vector":
        raise MplError(
            f"{path} takes {meta.input_spec.get('kind', 'unknown')} inputs of shape {shape}; "
            "`mpl plot regions` draws decision regions over a plane, so it needs a checkpoint of 2-D "
            "vector inputs (e.g. trained on `mpl data import twomoon`). For other models use "
            "`mpl plot curves` or `mpl eval`."
        )
    model, meta = load_model(path)
    return model.eval(), meta


def _load_points(location: str, what: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    from mpltools.data.loaders import load_in_memory
    from mpltools.data.opening import open_shard_set

    shards = open_shard_set(location)
    spec = shards.input_spec
    if spec is not None and (spec.kind != "vector" or list(spec.shape or []) != [2]):
        raise MplError(
            f"{location} ({what}) holds {spec.kind} inputs of shape {list(spec.shape or [])}; "
            "`mpl plot regions` needs 2-D points (e.g. `mpl data import twomoon`)."
        )
    x, y, _keys = load_in_memory(shards)
    if x.ndim != 2 or x.shape[1] != 2:
        raise MplError(f"{location} ({what}) holds inputs of shape {list(x.shape[1:])}; `mpl plot regions` needs 2-D points.")
    return x.astype(np.float64), y, shards.classes


def _predict(model, points: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in torch.from_numpy(points.astype(np.float32)).split(65536)])
    return logits.softmax(dim=1).numpy()


def _tint(colour: str, amount: float = 0.72) -> tuple[float, float, float]:
    rgb = np.array([int(colour[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])
    return tuple(rgb + (1.0 - rgb) * amount)


@dataclass
class _Points:
    x: np.ndarray  # --data's points, (n, 2)
    y: np.ndarray | None  # their classes (None: an unlabelled set)
    classes: list[str] | None  # --data's class names
    lx: np.ndarray | None  # --labeled's points (None: not given)
    ly: np.ndarray | None


@dataclass
class _Plane:
    low: np.ndarray  # lower-left corner of the plotted area
    high: np.ndarray  # upper-right corner
    gx: np.ndarray  # the grid's x and y coordinates, (resolution, resolution) each
    gy: np.ndarray
    grid: np.ndarray  # the grid's points, (resolution**2, 2)


def run_regions(
    checkpoints: list[Path],
    data: str,
    out: Path,
    *,
    labeled: str | None = None,
    titles: str | None = None,
    resolution: int = 300,
    dpi: int = 100,
    force: bool = False,
) -> list[str]:
    """Decision regions of 2-D checkpoints, one panel each, in one PNG; returns [the PNG's path]."""
    if not checkpoints:
        raise UsageError("give at least one checkpoint.")
    if resolution < 10:
        raise UsageError(f"--resolution {resolution} is too small; use at least 10 grid points per axis.")
    out = _check_out(out, force)
    given_titles = _split_labels(titles, len(checkpoints), "titles")
    models = [_load_2d_checkpoint(Path(c)) for c in checkpoints]
    x, y, data_classes = _load_points(data, "--data")
    lx, ly = (None, None)
    if labeled is not None:
        lx, ly, _ = _load_points(labeled, "--labeled")
    points = _Points(x, y, data_classes, lx, ly)
    fig = _draw_regions(models, checkpoints, given_titles, points, _plane(points, resolution), dpi)
    return [_save(fig, out, force)]


def _plane(points: _Points, resolution: int) -> _Plane:
    """A resolution x resolution grid over the bounding box of all points, padded by 8% on each side."""
    everything = points.x if points.lx is None else np.concatenate([points.x, points.lx])
    low, high = everything.min(axis=0), everything.max(axis=0)
    pad = np.maximum((high - low) * 0.08, 1e-3)
    low, high = low - pad, high + pad
    gx, gy = np.meshgrid(np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution))
    return _Plane(low, high, gx, gy, np.stack([gx.ravel(), gy.ravel()], axis=1))


def _draw_regions(
    models: list, checkpoints: list[Path], given_titles: list[str] | None, points: _Points, plane: _Plane, dpi: int
):
    """The figure: one panel per checkpoint, unused grid cells blank, the classes' legend below."""
    rows, cols = _grid(len(models), 3)
    w, h = PANEL_INCHES["regions"]
    fig = _figure(w * cols, h * rows + 0.5, dpi)  # first: without matplotlib it says which extra to install
    from matplotlib.colors import ListedColormap

    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    num_classes = max(meta.num_classes for _, meta in models)
    colours = [CLASS_COLOURS[c % len(CLASS_COLOURS)] for c in range(num_classes)]
    for i, (ax, (model, meta), path) in enumerate(zip(axes, models, checkpoints)):
        title = given_titles[i] if given_titles else f"{Path(path).parent.name}/{Path(path).stem}"
        cmap = ListedColormap([_tint(c) for c in colours[: meta.num_classes]])
        _region_panel(ax, model, meta.num_classes, title, cmap, colours, points, plane)
    for ax in axes[len(models) :]:
        ax.set_axis_off()
    names = models[0][1].classes or [str(c) for c in range(num_classes)]
    handles = _legend_handles(names, colours, num_classes, points.lx)
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    return fig


def _region_panel(ax, model, k: int, title: str, cmap, colours: list[str], points: _Points, plane: _Plane) -> None:
    """One checkpoint's panel: its predicted class over the grid (and the 0.5 contour of two classes), the data
    points coloured by class, the labelled points large with a black edge; the title adds the top-1 on --data."""
    low, high = plane.low, plane.high
    probs = _predict(model, plane.grid)
    cls = probs.argmax(axis=1).reshape(plane.gx.shape)
    ax.imshow(
        cls,
        extent=(low[0], high[0], low[1], high[1]),
        origin="lower",
        interpolation="nearest",
        cmap=cmap,
        vmin=-0.5,
        vmax=k - 0.5,
        aspect="auto",
    )
    if k == 2:
        ax.contour(plane.gx, plane.gy, probs[:, 1].reshape(plane.gx.shape), levels=[0.5], colors="k", linewidths=0.8)
    x, y, lx, ly = points.x, points.y, points.lx, points.ly
    point_colours = [colours[c % k] for c in y] if y is not None else "0.3"
    ax.scatter(x[:, 0], x[:, 1], s=5, c=point_colours, alpha=0.55, linewidths=0, zorder=2)
    if lx is not None:
        lab_colours = [colours[c % k] for c in ly] if ly is not None else "0.3"
        ax.scatter(lx[:, 0], lx[:, 1], s=150, c=lab_colours, marker="o", edgecolors="black", linewidths=2.2, zorder=4)
    if y is not None and k == len(points.classes or []):
        accuracy = float((_predict(model, x).argmax(axis=1) == y).mean())
        title += f"\ntop-1 {accuracy:.3f} on {len(x):,} points"
    ax.set_title(title, fontsize=10)
    ax.set_xlim(low[0], high[0])
    ax.set_ylim(low[1], high[1])
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize=8)


def _legend_handles(names: list[str], colours: list[str], num_classes: int, lx: np.ndarray | None) -> list:
    """One square per class in its colours, and a large circle for the labelled points when they are drawn."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            marker="s",
            linestyle="",
            markersize=9,
            markerfacecolor=_tint(colours[c]),
            markeredgecolor=colours[c],
            label=f"class {names[c] if c < len(names) else c}",
        )
        for c in range(num_classes)
    ]
    if lx is not None:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markersize=10,
                markerfacecolor="white",
                markeredgecolor="black",
                markeredgewidth=2,
                label=f"labelled ({len(lx)})",
            )
        )
    return handles

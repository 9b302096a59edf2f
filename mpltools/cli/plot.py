"""`mpl plot curves|feedback|regions`: pictures of runs and of 2-D checkpoints (matplotlib, imported when a
command runs, like torch: not for --help)."""

from __future__ import annotations

from pathlib import Path

import typer

from mpltools.cli import options
from mpltools.cli.invocation import emit

app = typer.Typer(
    no_args_is_help=True,
    help="Pictures: learning curves and feedback diagnostics of runs, decision regions of 2-D models (needs matplotlib).\n\n"
    "\b\nExample:\n  mpl plot curves runs/digits --out curves.png",
)


@app.command("curves")
def plot_curves(
    runs: list[Path] = typer.Argument(..., help="Run folders (or their metrics.jsonl files)."),
    out: Path = options.out("PNG file to write."),
    labels: str | None = options.labels(),
    smooth: int = typer.Option(1, min=1, help="Moving average over this many logged points (losses and h; not accuracies)."),
    dpi: int = options.dpi(),
    force: bool = options.force(),
) -> None:
    """Learning curves from metrics.jsonl: both networks' losses, h and its baseline, validation top-1; one line per run.

    \b
    Example:
      mpl plot curves runs/digits runs/digits_supervised --labels MPL,supervised --out curves.png
    """
    from mpltools.commands import plot as command

    for path in command.run_curves(runs, out, labels=labels, smooth=smooth, dpi=dpi, force=force):
        typer.echo(path)


@app.command("feedback")
def plot_feedback(
    runs: list[Path] = typer.Argument(..., help="Run folders (or their metrics.jsonl files) with diag/* keys."),
    out: Path = options.out("PNG file to write."),
    labels: str | None = options.labels(),
    smooth: int = typer.Option(1, min=1, help="Moving average over this many logged points (diagnostics; not accuracies)."),
    dpi: int = options.dpi(),
    force: bool = options.force(),
    as_json: bool = options.as_json("Print a JSON report (the PNG, the panels drawn and left out) instead of the path."),
) -> None:
    """What the feedback did over time: h, the teacher's gradient by term, MPL cosines, pseudo-label health, validation top-1.

    \b
    Example:
      mpl plot feedback runs/digits runs/feedback_only --labels MPL,feedback-only --out feedback.png
    """
    from mpltools.commands import plot_feedback as command

    report = command.run_feedback(runs, out, labels=labels, smooth=smooth, dpi=dpi, force=force)
    emit(report, as_json, lambda r: r["out"])


@app.command("regions")
def plot_regions(
    checkpoints: list[str] = options.input_path(
        "Checkpoints with 2-D inputs (e.g. TwoMoon), one panel each; - reads a path from stdin."
    ),
    data: str = options.input_path_option(
        "--data", "Shard set of 2-D points to draw (labelled: coloured by class; sets the plotted area)."
    ),
    out: Path = options.out("PNG file to write."),
    labeled: str | None = options.input_path_option(
        "--labeled", "Labelled shard set; its points are drawn large with a black edge.", required=False
    ),
    titles: str | None = typer.Option(
        None, "--titles", help="Comma-separated panel titles, one per checkpoint (default: run folder/file name)."
    ),
    resolution: int = typer.Option(300, min=10, max=2000, help="Grid points per axis."),
    dpi: int = options.dpi(),
    force: bool = options.force(),
) -> None:
    """Decision regions of 2-D checkpoints over the data's bounding box, like the paper's Figure 2.

    \b
    Example:
      mpl plot regions runs/twomoon/student.safetensors --data data/twomoon/all --out regions.png
    """
    from mpltools.commands import plot as command

    paths = command.run_regions(
        [Path(c) for c in checkpoints], data, out, labeled=labeled, titles=titles, resolution=resolution, dpi=dpi, force=force
    )
    for path in paths:
        typer.echo(path)

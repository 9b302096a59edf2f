"""`mpl plot feedback`: the command's options (registered on `plot_app` in mpltools/cli.py); the work is in
mpltools/commands/plot_feedback.py, imported when the command runs (no torch or matplotlib for --help)."""

from __future__ import annotations

from pathlib import Path

import typer

from mpltools.cli_common import _emit, _execute


def plot_feedback(
    runs: list[Path] = typer.Argument(..., help="Run folders (or their metrics.jsonl files) with diag/* keys."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    labels: str | None = typer.Option(
        None, "--labels", help="Comma-separated legend names, one per run (default: the run folders' names)."
    ),
    smooth: int = typer.Option(1, min=1, help="Moving average over this many logged points (diagnostics; not accuracies)."),
    dpi: int = typer.Option(100, min=20, max=600, help="Resolution of the PNG."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON report (the PNG, the panels drawn and left out) instead of the path."
    ),
) -> None:
    """What the feedback did over time: h, the teacher's gradient by term, MPL cosines, pseudo-label health, validation top-1.

    \b
    Example:
      mpl plot feedback runs/digits runs/feedback_only --labels MPL,feedback-only --out feedback.png
    """
    from mpltools.commands import plot_feedback as command

    report = _execute(lambda: command.run_feedback(runs, out, labels=labels, smooth=smooth, dpi=dpi, force=force))
    _emit(report, as_json, [report["out"]])

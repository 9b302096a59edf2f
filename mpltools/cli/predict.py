"""`mpl predict`: class probabilities for new inputs (image files, folders, shard sets, or paths on stdin)."""

from __future__ import annotations

from pathlib import Path

import typer

from mpltools.cli import options


def predict(
    checkpoint: str = options.input_path("Any exchanged checkpoint, or - to read its path from stdin's first line."),
    inputs: list[str] = typer.Argument(
        ..., help="Image files, folders of images (searched recursively), shard sets, or - to read paths from stdin."
    ),
    out: Path | None = options.out_or_default("Write here (atomically) instead of stdout."),
    fmt: str | None = typer.Option(None, "--format", help="jsonl (default) or csv (the default for an --out ending in .csv)."),
    top_k: int | None = typer.Option(None, "--top-k", help="Classes per input, most likely first (default 5, or all if fewer)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Inputs per batch."),
    force: bool = options.force(),
) -> None:
    """Class probabilities for new inputs: one JSON line (or CSV row) per input with its top-k classes.

    Inputs are prepared as `mpl eval` prepares them (the checkpoint's eval view and normalisation).

    \b
    Example:
      mpl predict runs/digits/student.safetensors photos/ --top-k 3
      find photos -name '*.png' | mpl predict runs/digits/student.safetensors - --format csv --out preds.csv
    """
    from mpltools.commands import predict as command

    report = command.run(Path(checkpoint), inputs, out=out, fmt=fmt, top_k=top_k, batch_size=batch_size, force=force)
    if report.get("out"):
        typer.echo(report["out"])

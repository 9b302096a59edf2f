"""`mpl eval`: a checkpoint's accuracy, loss and calibration on labelled shards."""

from __future__ import annotations

from pathlib import Path

import typer

from mpltools.cli import options
from mpltools.cli.invocation import command_line, emit


def evaluate(
    ctx: typer.Context,
    checkpoint: str = options.input_path("Any exchanged checkpoint, or - to read its path from stdin."),
    data: str = options.input_path_option(
        "--data", "Labelled shard set to evaluate on: a folder, a brace pattern or a URL of shards."
    ),
    real: Path | None = typer.Option(None, "--real", help="JSON file {sample key: [class, ...]} for ReaL-style precision@1."),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Also write per-sample probabilities as a shard set here."
    ),
    batch_size: int = typer.Option(256, min=1, help="Evaluation batch size per process."),
    force: bool = options.force("Overwrite --predictions if it exists."),
    as_json: bool = options.as_json("Print the metrics as JSON."),
) -> None:
    """Top-1/top-5, per-class accuracy, loss and calibration of a checkpoint on labelled shards.

    \b
    Example:
      mpl eval runs/digits/finetune/finetuned.safetensors --data data/digits/split/val --json
      mpl eval runs/digits/student.safetensors --data 'https://host/val/shard-{000000..000003}.tar'
    """
    from mpltools.commands import eval as command

    result = command.run(
        Path(checkpoint), data, real=real, predictions=predictions, batch_size=batch_size, force=force, command=command_line(ctx)
    )
    emit(result, as_json, command.render)

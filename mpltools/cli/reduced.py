"""`mpl reduced predict` and `mpl reduced train`: Reduced Meta Pseudo Labels' two steps."""

from __future__ import annotations

from pathlib import Path

import typer

from mpltools.cli import options
from mpltools.cli.invocation import command_line, emit
from mpltools.cli.train import run_recipe

app = typer.Typer(
    no_args_is_help=True,
    help="Reduced Meta Pseudo Labels: store a large teacher's predictions once "
    "(predict), then train a small reduced teacher with the student (train).\n\n"
    "\b\nExample:\n  mpl reduced predict runs/b7/student.safetensors --data data/yfcc/unlabeled --out data/yfcc/pred",
)


@app.command("predict")
def predict(
    ctx: typer.Context,
    checkpoint: str = options.input_path("The large trained teacher (any exchanged checkpoint), or - for stdin."),
    data: str = options.input_path_option("--data", "Shard set to predict (run it for the unlabelled and for the labelled set)."),
    out: Path = options.out("Output: a copy of --data with the prediction stored in every sample."),
    topk: int = typer.Option(0, "--topk", help="Store only the N most likely classes (topk.npy) instead of the full logits."),
    logits: bool = typer.Option(False, "--logits", help="Store the full logits (teacher_logits.npy); the default."),
    dtype: str = typer.Option("float16", "--dtype", help="teacher_logits.npy precision: float16 (half the disk) or float32."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per batch and process."),
    workers: int | None = options.workers(),
    max_per_shard: int | None = typer.Option(None, min=1, help="Samples per output shard (default: as in --data)."),
    ignore_data_classes: bool = options.ignore_data_classes(
        "Unlabelled --data whose class names differ from the teacher's (e.g. an ImageFolder import)."
    ),
    force: bool = options.force(),
    as_json: bool = options.as_json("Print a JSON report instead of the path."),
) -> None:
    """Step 1: the large teacher predicts every image once; its outputs are stored beside the images.

    \b
    Example:
      mpl reduced predict runs/b7/student.safetensors --data data/yfcc/unlabeled --topk 128 --out data/yfcc/unlabeled_pred
    """
    from mpltools.commands import reduced as command

    report = command.predict(
        Path(checkpoint),
        data,
        out,
        topk=topk,
        logits=logits,
        dtype=dtype,
        batch_size=batch_size,
        workers=workers,
        max_per_shard=max_per_shard,
        ignore_data_classes=ignore_data_classes,
        force=force,
        command=command_line(ctx),
    )
    emit(report, as_json, lambda r: r["out"])


@app.command("train")
def train(
    ctx: typer.Context,
    recipe: Path = options.recipe(
        "TOML recipe whose data.labeled/unlabeled are prediction sets: a file or a shipped name (e.g. reduced_b7_yfcc)."
    ),
    overrides: list[str] = options.overrides(),
    out: Path | None = options.run_folder(),
    seed: int | None = options.recipe_seed(),
    print_config: bool = options.print_config(),
    force: bool = options.start_over(),
    as_json: bool = options.run_report(),
) -> None:
    """Step 2: train the reduced teacher (an MLP over the stored predictions) and the student with MPL.

    \b
    Example:
      mpl reduced train recipes/reduced_b7_yfcc.toml --out runs/reduced_b7
    """
    from mpltools.commands import reduced as command

    run_recipe(ctx, command.train, recipe, overrides, seed, out, print_config, force, as_json)

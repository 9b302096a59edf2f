"""`mpl train` and `mpl finetune`; `run_recipe` is also `mpl reduced train`'s (the same options, another loop)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from mpltools.cli import options
from mpltools.cli.invocation import command_line, emit


def train(
    ctx: typer.Context,
    recipe: Path = options.recipe("TOML recipe: a file, or a shipped recipe's name (`mpl recipes ls`), e.g. digits."),
    overrides: list[str] = options.overrides(),
    out: Path | None = options.run_folder(),
    seed: int | None = options.recipe_seed(),
    print_config: bool = options.print_config(),
    force: bool = options.start_over(),
    as_json: bool = options.run_report(),
    init_from: list[Path] = typer.Option(
        [],
        "--init-from",
        help="Start a NEW run from another run: its folder (newest state), a state RUN/state/step_N, or checkpoints "
        "(repeat for a student and a teacher). The step restarts at 0; the provenance goes into run.json and the checkpoints.",
    ),
    init_optimizers: bool = typer.Option(
        False, "--init-optimizers", help="With --init-from a run or state: also load optimisers, feedback baseline, EMA."
    ),
    continue_schedule: bool = typer.Option(
        False, "--continue-schedule", help="With --init-from a run or state: start at its step instead of 0."
    ),
) -> None:
    """Train a teacher and a student with Meta Pseudo Labels (or a baseline: supervised, uda, fixmatch, pseudo-label).

    \b
    Example:
      mpl train recipes/digits.toml --out runs/digits
      mpl train recipes/digits.toml --set schedule.steps=50 --print-config
      mpl train recipes/digits.toml --set 'data.unlabeled=data/pool/shard-{000000..000099}.tar'
      mpl train recipes/digits.toml --set schedule.steps=3000 --out runs/digits-longer --init-from runs/digits --continue-schedule
    """
    from functools import partial

    from mpltools.commands import train as command

    warm = {"init_from": init_from, "init_optimizers": init_optimizers, "continue_schedule": continue_schedule}
    run_recipe(ctx, partial(command.run, **warm), recipe, overrides, seed, out, print_config, force, as_json)


def run_recipe(
    ctx: typer.Context,
    work: Callable[..., dict],
    recipe: Path,
    overrides: list[str],
    seed: int | None,
    out: Path | None,
    print_config: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Resolve RECIPE, then print it (--print-config) or hand it to `work` (`commands.train.run` or
    `commands.reduced.train`) and print the student's path or the JSON report."""
    from mpltools.commands import recipe_resolve

    resolved = recipe_resolve.load(recipe, overrides, seed)
    if print_config:
        typer.echo(recipe_resolve.show(resolved, recipe))
        return
    report = work(resolved, recipe_resolve.run_folder(out, recipe), force=force, command=command_line(ctx))
    emit(report, as_json, lambda r: r["student"])


def finetune(
    ctx: typer.Context,
    checkpoint: str = options.input_path("Checkpoint to finetune (usually RUN/student.safetensors), or - for stdin."),
    labeled: str = options.input_path_option("--labeled", "Labelled shard set."),
    val: str | None = options.input_path_option(
        "--val", "Labelled shard set to evaluate on at the end (optional).", required=False
    ),
    recipe: Path | None = options.recipe_option("Take the [finetune] section from this recipe (a file or a shipped name)."),
    overrides: list[str] = options.overrides("Override a setting, e.g. finetune.steps=500 (repeatable)."),
    out: Path | None = options.out_or_default("Output folder (default: <checkpoint folder>/finetune)."),
    force: bool = options.start_over("output folder"),
    as_json: bool = options.as_json(),
) -> None:
    """Finetune a checkpoint on labelled data (the paper's final phase); prints the new checkpoint's path.

    \b
    Example:
      mpl finetune runs/digits/student.safetensors --labeled data/digits/split/labeled --recipe recipes/digits.toml
    """
    from mpltools.commands import finetune as command

    report = command.run(Path(checkpoint), labeled, out, recipe, overrides, force=force, command=command_line(ctx), val=val)
    emit(report, as_json, lambda r: r["finetuned"])

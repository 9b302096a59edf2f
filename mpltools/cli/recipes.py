"""`mpl recipes ls/cp/validate`: the shipped recipes, a copy to edit, and a dry check of any recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from mpltools.cli import options
from mpltools.cli.invocation import emit

app = typer.Typer(
    no_args_is_help=True,
    help="Shipped recipes: list them, copy one to edit, validate a recipe "
    "without running it.\n\n\b\nExample:\n  mpl recipes ls\n  mpl recipes cp digits my_digits.toml\n"
    "  mpl recipes validate my_digits.toml --set schedule.steps=100",
)


@app.command("ls")
def recipes_ls(as_json: bool = options.as_json("Print the recipes and their header fields as JSON.")) -> None:
    """List the shipped recipes with what each reproduces and the result to expect, then their tiny twins.

    \b
    Example:
      mpl recipes ls
    """
    from mpltools.commands import recipes as command

    report = {"recipes": command.list_recipes(), "tiny": command.list_recipes(tiny=True)}
    emit(report, as_json, lambda r: command.render_list(r["recipes"], r["tiny"]))


@app.command("cp")
def recipes_cp(
    name: str = options.shipped_recipe("A shipped recipe (see `mpl recipes ls`), e.g. digits or tiny/digits."),
    dest: Path = typer.Argument(..., help="File to write, or an existing folder to copy into."),
    force: bool = options.force("Overwrite DEST if it exists."),
) -> None:
    """Copy a shipped recipe to edit it; prints the new file's path.

    \b
    Example:
      mpl recipes cp cifar10_4k my_cifar.toml
    """
    from mpltools.commands import recipes as command

    typer.echo(command.copy(name, dest, force))


@app.command("validate")
def recipes_validate(
    recipe: Path = options.recipe("TOML recipe to check (a path, or the name of a shipped recipe)."),
    overrides: list[str] = options.overrides(),
    seed: int | None = options.recipe_seed(),
    out: Path | None = options.out_or_default("Run folder `mpl train` would get (default runs/<recipe name>)."),
    force: bool = options.force("As `mpl train --force`: an existing run folder would be started over."),
    as_json: bool = options.as_json("Print the report as JSON."),
) -> None:
    """Every check `mpl train` makes before writing (recipe, models, data, checkpoints), without training; exit 2 names the key.

    \b
    Example:
      mpl recipes validate recipes/digits.toml --set model.name=resnet50
    """
    from mpltools.commands import recipe_check

    report = recipe_check.check(recipe, overrides, seed, out=out, force=force)
    emit(report, as_json, recipe_check.render)

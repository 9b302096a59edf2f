"""`mpl recipes ls/cp/validate`: the shipped recipes, a copy to edit, and a dry check of any recipe."""

from __future__ import annotations

from pathlib import Path

import typer

from mpltools.cli_common import _emit, _execute

recipes_app = typer.Typer(
    no_args_is_help=True,
    help="Shipped recipes: list them, copy one to edit, validate a recipe "
    "without running it.\n\n\b\nExample:\n  mpl recipes ls\n  mpl recipes cp digits my_digits.toml\n"
    "  mpl recipes validate my_digits.toml --set schedule.steps=100",
)


@recipes_app.command("ls")
def recipes_ls(as_json: bool = typer.Option(False, "--json", help="Print the recipes and their header fields as JSON.")) -> None:
    """List the shipped recipes with what each reproduces and the result to expect.

    \b
    Example:
      mpl recipes ls
    """
    from mpltools.commands import recipes as command

    items = _execute(command.list_recipes)
    if as_json:
        _emit({"recipes": items}, True, [])
    else:
        _emit({}, False, [command.render_list(items)] if items else [])


@recipes_app.command("cp")
def recipes_cp(
    name: str = typer.Argument(..., help="A shipped recipe (see `mpl recipes ls`), e.g. digits."),
    dest: Path = typer.Argument(..., help="File to write, or an existing folder to copy into."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Copy a shipped recipe to edit it; prints the new file's path.

    \b
    Example:
      mpl recipes cp cifar10_4k my_cifar.toml
    """
    from mpltools.commands import recipes as command

    typer.echo(_execute(lambda: command.copy(name, dest, force)))


@recipes_app.command("validate")
def recipes_validate(
    recipe: Path = typer.Argument(..., help="TOML recipe to check (a path, or the name of a shipped recipe)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe key: section.key=value (repeatable)."),
    seed: int | None = typer.Option(None, help="Same as --set runtime.seed=N."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder `mpl train` would get (default runs/<recipe name>)."),
    force: bool = typer.Option(False, "--force", help="As `mpl train --force`: an existing run folder would be started over."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Every check `mpl train` makes before writing (recipe, models, data, checkpoints), without training; exit 2 names the key.

    \b
    Example:
      mpl recipes validate recipes/digits.toml --set model.name=resnet50
    """
    from mpltools.commands import recipe_check, recipes

    def go():
        path = recipe
        if not path.exists() and path.suffix in ("", ".toml") and len(path.parts) == 1:
            path = recipes.find(str(path))  # a shipped recipe by name
        return recipe_check.check(path, overrides, seed, out=out, force=force)

    report = _execute(go)
    _emit(report, as_json, [recipe_check.render(report)])

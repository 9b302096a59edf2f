"""The options and arguments several `mpl` commands share, declared once; each command passes its own help text
where the meaning differs (`--force` overwrites an output, or starts a run over).

A checkpoint or shard-set path, as an argument or an option, may be `-`: the path is then read from the next
line of stdin, while the arguments are parsed (so `ls runs/*/student.safetensors | mpl eval - --data ...` works).
Several `-` read one line each, options in the order given first, then arguments. An empty stdin is a usage
error (exit 2) through the root group's error path.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from mpltools.errors import UsageError

_COMPLETING = "_MPL_COMPLETE"  # set while the shell asks for completions: never wait on stdin then


def path_from_stdin(value: str) -> str:
    """`-` means: the path is the next line of stdin (so `mpl eval "$(...)"` and pipes both work)."""
    if value != "-" or _COMPLETING in os.environ:
        return value
    line = sys.stdin.readline().strip()
    if not line:
        raise UsageError("expected a path on stdin (because '-' was given), but stdin was empty.")
    return line


# --- inputs: checkpoints and shard sets ('-' reads the path from stdin) ----------------------------------------


def input_path(help: str) -> Any:
    """A checkpoint or shard set as an argument (a `list[str]` parameter takes several)."""
    return typer.Argument(..., help=help, parser=path_from_stdin)


def input_path_option(flag: str, help: str, *, required: bool = True, repeatable: bool = False) -> Any:
    """A checkpoint or shard set as an option: required, optional (None), or repeatable (a list, default empty)."""
    default = [] if repeatable else (... if required else None)
    return typer.Option(default, flag, help=help, parser=path_from_stdin)


# --- recipes ------------------------------------------------------------------------------------------------


# A recipe is a file or a shipped recipe's name (`mpltools.recipe_files.locate`, called by the command); the shell
# completes both, and `--set` completes the recipe's keys.


def _complete_recipe(incomplete: str) -> list[str]:
    from mpltools.recipe_files import complete_names

    return complete_names(incomplete)


def _complete_shipped(incomplete: str) -> list[str]:
    from mpltools.recipe_files import shipped

    return [n for n in shipped() if n.startswith(incomplete)]


def _complete_key(incomplete: str) -> list[str]:
    from mpltools.config import keys

    return [f"{k}=" for k in keys() if f"{k}=".startswith(incomplete)]


def recipe(help: str) -> Any:
    return typer.Argument(..., help=help, autocompletion=_complete_recipe)


def recipe_option(help: str) -> Any:
    """An optional --recipe (a file or a shipped recipe's name)."""
    return typer.Option(None, "--recipe", help=help, autocompletion=_complete_recipe)


def shipped_recipe(help: str) -> Any:
    """A shipped recipe's name (`mpl recipes cp`)."""
    return typer.Argument(..., help=help, autocompletion=_complete_shipped)


def overrides(help: str = "Override a recipe key: section.key=value (repeatable).") -> Any:
    return typer.Option([], "--set", help=help, autocompletion=_complete_key)


def recipe_seed() -> Any:
    return typer.Option(None, "--seed", help="Same as --set runtime.seed=N (0 to 2^32-1).")


def print_config() -> Any:
    return typer.Option(
        False,
        "--print-config",
        help="Check model names/kwargs, print the resolved recipe (TOML) and exit (`mpl recipes validate` checks the data too).",
    )


def run_folder() -> Any:
    return out_or_default("Run folder (default runs/<recipe name>). Re-running on it resumes.")


def run_report() -> Any:
    return as_json("Print a JSON report (paths, final metrics) on stdout.")


# --- outputs and their manners ------------------------------------------------------------------------------


def out(help: str) -> Any:
    """A required --out: the file or folder a command writes."""
    return typer.Option(..., "--out", "-o", help=help)


def out_or_default(help: str) -> Any:
    """An optional --out: the command picks a folder when it is not given."""
    return typer.Option(None, "--out", "-o", help=help)


def force(help: str = "Overwrite --out if it exists.") -> Any:
    return typer.Option(False, "--force", help=help)


def start_over(what: str = "run folder") -> Any:
    """--force of a command that resumes: an existing output is deleted, not overwritten."""
    return force(f"Delete an existing {what} and start over.")


def as_json(help: str = "Print a JSON report on stdout.") -> Any:
    return typer.Option(False, "--json", help=help)


def seed(help: str) -> Any:
    """A command's own --seed, in the range numpy's generators take (a recipe's is `runtime.seed`, as wide)."""
    from mpltools.recipe_ranges import SEED_MAX

    return typer.Option(0, "--seed", min=0, max=SEED_MAX, help=help)


def max_per_shard(help: str = "Samples per tar shard.") -> Any:
    return typer.Option(10_000, "--max-per-shard", min=1, help=help)


# --- scoring images with a checkpoint; pictures -------------------------------------------------------------


def workers() -> Any:
    return typer.Option(None, "--workers", min=0, help="Decoding processes per process (default: 0 on CPU, up to 8 on GPU).")


def ignore_data_classes(help: str) -> Any:
    return typer.Option(False, "--ignore-data-classes", help=help)


def labels() -> Any:
    return typer.Option(None, "--labels", help="Comma-separated legend names, one per run (default: the run folders' names).")


def dpi() -> Any:
    return typer.Option(100, "--dpi", min=20, max=600, help="Resolution of the PNG.")

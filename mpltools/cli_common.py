"""What every command module of the CLI shares: error handling, exit codes, output of reports."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable

import typer
from typer.core import TyperGroup

from mpltools import log
from mpltools.errors import Interrupted, MplError

_state = {"debug": False}


def _command_line() -> str:
    args = _state.get("argv")
    return "mpl " + " ".join(shlex.quote(a) for a in (args if args is not None else sys.argv[1:]))


def _execute(fn: Callable[[], object]) -> object:
    """Run a command; map failures to DESIGN §2's exit codes with a one-paragraph message."""
    api = _state.get("api", False)  # mpltools.run(): the caller gets the MplError itself, nothing is printed
    try:
        return fn()
    except MplError as exc:
        if _state["debug"] or api:
            raise
        log.error(exc.message)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        if api:
            raise Interrupted("interrupted.") from None
        log.error("interrupted.")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - anything unexpected still gets a message and exit 1
        if _state["debug"]:
            raise
        if api:
            raise MplError(f"{type(exc).__name__}: {exc}") from exc
        log.error(f"{type(exc).__name__}: {exc} (run with `mpl --debug ...` for a traceback).")
        raise typer.Exit(1) from None


def resolve_path_arg(value: str) -> str:
    """`-` means: read the path from the first line of stdin (so `mpl eval "$(...)"` and pipes both work)."""
    if value != "-":
        return value
    line = sys.stdin.readline().strip()
    if not line:
        raise MplError("expected a path on stdin (because '-' was given), but stdin was empty.", exit_code=2)
    return line


def _emit(report: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(report, indent=1, sort_keys=True))
    else:
        for line in lines:
            typer.echo(line)


GLOBAL_FLAGS = ("-q", "--quiet", "--debug", "--allow-pipe")


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move `-q`/`--quiet`/`--debug`/`--allow-pipe` to the front, so `mpl train R -q` means `mpl -q train R`.

    Arguments after a `--` are left alone (they are values, not flags).
    """
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


class MplGroup(TyperGroup):
    """The root command group: accepts the global flags after a subcommand too."""

    def parse_args(self, ctx, args):
        _state["raw_args"] = list(args)  # what the user typed: `--allow-pipe` accepts only pipe: locations among it
        return super().parse_args(ctx, hoist_global_flags(list(args)))

"""What every `mpl` command runs inside: the invocation's state, the error path, and the printing of a result.

`main()` makes an `Invocation` and hands it to the root group as the context object (a test driving `app`
directly gets a fresh one); nothing is kept in module globals. The root group is the error path of every
command: a subcommand's arguments are parsed, and it runs, inside the group's `invoke`, so a failure anywhere
(a `-` with empty stdin, a bad recipe, a corrupt shard) gets DESIGN §2's message and exit code.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from mpltools import log, memory, signals
from mpltools.errors import Interrupted, MplError

GLOBAL_FLAGS = ("-q", "--quiet", "--debug", "--allow-pipe")


@dataclass
class Invocation:
    """One run of `mpl`: called from Python (`mpltools.run`) or not, what was typed, and `--debug`."""

    api: bool = False  # mpltools.run(): the caller gets the MplError itself, nothing is printed
    args: list[str] | None = None  # the arguments as typed, before the global flags are moved to the front
    debug: bool = False

    def command_line(self) -> str:
        """`mpl ARGS` as typed, for the provenance of what a command writes."""
        args = self.args if self.args is not None else sys.argv[1:]
        return "mpl " + " ".join(shlex.quote(a) for a in args)


def invocation(ctx: typer.Context) -> Invocation:
    """This run's Invocation, from any command's context (subcommands inherit the root's context object)."""
    if ctx.obj is None:
        ctx.obj = Invocation()
    return ctx.obj


def command_line(ctx: typer.Context) -> str:
    """`mpl ARGS` of the command running in `ctx` (for the provenance of what it writes)."""
    return invocation(ctx).command_line()


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move `-q`/`--quiet`/`--debug`/`--allow-pipe` to the front, so `mpl train R -q` means `mpl -q train R`.

    Arguments after a `--` are left alone (they are values, not flags).
    """
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


class MplGroup(TyperGroup):
    """The root command group: records what was typed, accepts the global flags after a subcommand too, and
    maps every command's failure to its exit code (DESIGN §2) with a one-paragraph message."""

    def parse_args(self, ctx, args):
        invocation(ctx).args = list(args)  # also what `--allow-pipe` accepts `pipe:` locations from
        try:
            return super().parse_args(ctx, hoist_global_flags(list(args)))
        except KeyboardInterrupt:  # Click would say "Aborted!" and exit 1
            signals.cleaning_up()
            log.error("interrupted.")
            raise typer.Exit(130) from None

    def invoke(self, ctx):
        run = invocation(ctx)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # --help, a usage error of the parser: click reports them
            raise
        except MplError as exc:
            if run.debug or run.api:
                raise
            log.error(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            signals.cleaning_up()
            why = f"interrupted ({exc.name})." if isinstance(exc, signals.SignalInterrupt) else "interrupted."
            if run.api:
                raise Interrupted(why) from None
            log.error(why)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - anything unexpected still gets a message and exit 1
            if run.debug:
                raise
            if memory.is_out_of_memory(exc):
                if run.api:
                    raise MplError(memory.message(exc)) from None
                memory.report(exc)
                raise typer.Exit(1) from None
            if run.api:
                raise MplError(f"{type(exc).__name__}: {exc}") from exc
            log.error(f"{type(exc).__name__}: {exc} (run with `mpl --debug ...` for a traceback).")
            raise typer.Exit(1) from None


def is_main_process() -> bool:
    """Whether this process prints the result: the only process, or rank 0 of an `accelerate launch` or
    `torchrun` job (they set RANK; `runtime.start` refuses to run when the process group and the launch
    disagree)."""
    return os.environ.get("RANK", "0") == "0"


def emit(report: dict | None, as_json: bool, text: Callable[[dict], str]) -> None:
    """Print a command's result on stdout, from the main process only: the report as JSON, or `text(report)`
    (nothing when that is empty). The other processes of a launch print nothing."""
    if not is_main_process():
        return
    if as_json:
        typer.echo(json.dumps(report, indent=1, sort_keys=True))
    elif shown := text(report):
        try:
            shown.encode("utf-8")
        except UnicodeEncodeError:  # a path that is not valid UTF-8: printed as its own bytes
            typer.echo(os.fsencode(shown))
        else:
            typer.echo(shown)

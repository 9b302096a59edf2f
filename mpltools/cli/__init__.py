"""The command line: declares commands and options, then hands over to `mpltools.commands.*`.

One module per command group, each registering its commands on the root `app` below: `train` (train,
finetune), `eval`, `reduced`, `data`, `recipes`, `plot` (curves, feedback, regions), `env`. What they share
lives in `options` (the options several commands take, and `-` for a path read from stdin) and `invocation`
(the error path and exit codes, the printing of a result). Only this package uses Typer, and none of it
imports torch: commands are imported inside the functions, so `mpl --help` and `mpl --version` stay instant.
"""

from __future__ import annotations

import shlex
import sys

import typer

from mpltools import __version__, log, memory, output_lock, signals
from mpltools.cli import data, plot, recipes, reduced
from mpltools.cli.env import env
from mpltools.cli.eval import evaluate
from mpltools.cli.invocation import Invocation, MplGroup, invocation
from mpltools.cli.predict import predict
from mpltools.cli.train import finetune, train
from mpltools.errors import Interrupted, MplError

# Plain (click) help: no boxes in pipes, and `[student]` in a help text stays as written (rich markup would eat it).
app = typer.Typer(
    cls=MplGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Meta Pseudo Labels as small Unix-style commands. Results on stdout, logs on stderr.\n\n"
    "\b\nExample:\n  mpl data import digits --out data/digits/all\n  mpl train recipes/digits.toml --out runs/digits -q",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mpl (mpltools) {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show a traceback on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Less output on stderr."),
    allow_pipe: bool = typer.Option(
        False,
        "--allow-pipe",
        help="Accept `pipe:CMD` shard locations typed on this command line (runs CMD in a shell; never from a recipe or manifest).",
    ),
) -> None:
    from mpltools.data import pipes

    run = invocation(ctx)
    pipes.allow_from_command_line((run.args or []) if allow_pipe else [])
    run.debug = debug
    log.set_quiet(quiet)


app.add_typer(data.app, name="data")
app.command("train")(train)
app.command("finetune")(finetune)
app.command("eval")(evaluate)
app.command("predict")(predict)
app.add_typer(reduced.app, name="reduced")
app.add_typer(plot.app, name="plot")
app.command("env")(env)
app.add_typer(recipes.app, name="recipes")


def main(argv: list[str] | None = None, *, api: bool = False) -> None:
    """Run `mpl ARGS` (default: this process's command line). With `api=True` (as `mpltools.run` calls it) a
    failure raises its MplError instead of printing a message; Typer still ends with SystemExit.

    SIGTERM is Ctrl-C from here on (`mpltools.signals`), the output lock names this command line, and loading torch
    is checked against a memory limit first (`mpltools.memory`)."""
    with signals.handled(restore=api):
        output_lock.describe_holder(shlex.join(["mpl", *(sys.argv[1:] if argv is None else argv)]))
        memory.guard_torch_import()
        try:
            app(args=argv, prog_name="mpl", obj=Invocation(api=api))
        except KeyboardInterrupt:  # before or after a command's own error path (parsing, shutting down)
            if api:
                raise Interrupted("interrupted.") from None
            signals.cleaning_up()
            log.error("interrupted.")
            raise SystemExit(130) from None
        except MemoryError as exc:
            if api:
                raise MplError(memory.message(exc)) from None
            memory.report(exc)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()

"""The command line: declares commands and options, then hands over to `mpltools.commands.*`.

Only the `mpltools/cli*.py` modules use Typer: this one (the root, train/finetune/eval, reduced,
plot), `cli_data` (`mpl data ...`), `cli_recipes` (`mpl recipes ...`), `cli_env` (`mpl env`), and
`cli_common` (error handling and exit codes, shared by all). None imports torch: commands are
imported inside the functions, so `mpl --help` and `mpl --version` stay instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mpltools import __version__, log
from mpltools.cli_common import MplGroup, _command_line, _emit, _execute, _state, resolve_path_arg  # noqa: F401
from mpltools.cli_data import data_app
from mpltools.cli_env import env_command
from mpltools.cli_plot_feedback import plot_feedback
from mpltools.cli_recipes import recipes_app
from mpltools.errors import MplError  # noqa: F401

# Plain (click) help: no boxes in pipes, and `[student]` in a help text stays as written (rich markup would eat it).
app = typer.Typer(
    cls=MplGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Meta Pseudo Labels as small Unix-style commands. Results on stdout, logs on stderr.\n\n"
    "\b\nExample:\n  mpl data import digits --out data/digits/all\n  mpl train recipes/digits.toml --out runs/digits -q",
)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mpl (mpltools) {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
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

    pipes.allow_from_command_line(_state.get("raw_args", []) if allow_pipe else [])
    _state["debug"] = debug
    log.set_quiet(quiet)


def _load_recipe(recipe: Path | None, overrides: list[str], seed: int | None):
    from mpltools.preflight import load_and_check as load_recipe

    return _execute(lambda: load_recipe(recipe, overrides, seed=seed))


@app.command("train")
def train(
    recipe: Path = typer.Argument(..., help="TOML recipe (see recipes/)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe key: section.key=value (repeatable)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder (default runs/<recipe name>). Re-running on it resumes."
    ),
    seed: int | None = typer.Option(None, help="Same as --set runtime.seed=N."),
    print_config: bool = typer.Option(
        False,
        "--print-config",
        help="Check model names/kwargs, print the resolved recipe (TOML) and exit (`mpl recipes validate` checks the data too).",
    ),
    force: bool = typer.Option(False, "--force", help="Delete an existing run folder and start over."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report (paths, final metrics) on stdout."),
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
    """Train a teacher and a student with Meta Pseudo Labels (or a baseline: supervised, uda, pseudo-label).

    \b
    Example:
      mpl train recipes/digits.toml --out runs/digits
      mpl train recipes/digits.toml --set schedule.steps=50 --print-config
      mpl train recipes/digits.toml --set 'data.unlabeled=data/pool/shard-{000000..000099}.tar'
      mpl train recipes/digits.toml --set schedule.steps=3000 --out runs/digits-longer --init-from runs/digits --continue-schedule
    """
    resolved = _load_recipe(recipe, overrides, seed)
    if print_config:
        from mpltools.commands.recipe_check import check_models
        from mpltools.config import to_toml

        _execute(lambda: check_models(resolved, str(recipe)))
        typer.echo(to_toml(resolved))
        return
    from mpltools.commands import train as command

    run_dir = out or Path("runs") / recipe.stem
    warm = {"init_from": init_from, "init_optimizers": init_optimizers, "continue_schedule": continue_schedule}
    report = _execute(lambda: command.run(resolved, run_dir, force=force, command=_command_line(), **warm))
    if report.get("student"):  # only the main process prints
        _emit(report, as_json, [report["student"]])


@app.command("finetune")
def finetune(
    checkpoint: str = typer.Argument(..., help="Checkpoint to finetune (usually RUN/student.safetensors), or - for stdin."),
    labeled: str = typer.Option(..., "--labeled", help="Labelled shard set."),
    val: str | None = typer.Option(None, "--val", help="Labelled shard set to evaluate on at the end (optional)."),
    recipe: Path | None = typer.Option(None, "--recipe", help="Take the [finetune] section from this recipe."),
    overrides: list[str] = typer.Option([], "--set", help="Override a setting, e.g. finetune.steps=500 (repeatable)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: <checkpoint folder>/finetune)."),
    force: bool = typer.Option(False, "--force", help="Delete an existing output folder and start over."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
) -> None:
    """Finetune a checkpoint on labelled data (the paper's final phase); prints the new checkpoint's path.

    \b
    Example:
      mpl finetune runs/digits/student.safetensors --labeled data/digits/split/labeled --recipe recipes/digits.toml
    """
    from mpltools.commands import finetune as command

    report = _execute(
        lambda: command.run(
            Path(resolve_path_arg(checkpoint)), labeled, out, recipe, overrides, force=force, command=_command_line(), val=val
        )
    )
    if report.get("finetuned"):
        _emit(report, as_json, [report["finetuned"]])


@app.command("eval")
def evaluate_checkpoint(
    checkpoint: str = typer.Argument(..., help="Any exchanged checkpoint, or - to read its path from stdin."),
    data: str = typer.Option(
        ..., "--data", help="Labelled shard set to evaluate on: a folder, a brace pattern or a URL of shards."
    ),
    real: Path | None = typer.Option(None, "--real", help="JSON file {sample key: [class, ...]} for ReaL-style precision@1."),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Also write per-sample probabilities as a shard set here."
    ),
    batch_size: int = typer.Option(256, min=1, help="Evaluation batch size per process."),
    force: bool = typer.Option(False, "--force", help="Overwrite --predictions if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Top-1/top-5, per-class accuracy, loss and calibration of a checkpoint on labelled shards.

    \b
    Example:
      mpl eval runs/digits/finetune/finetuned.safetensors --data data/digits/split/val --json
      mpl eval runs/digits/student.safetensors --data 'https://host/val/shard-{000000..000003}.tar'
    """
    from mpltools.commands import eval as command

    result = _execute(
        lambda: command.run(
            Path(resolve_path_arg(checkpoint)),
            data,
            real=real,
            predictions=predictions,
            batch_size=batch_size,
            force=force,
            command=_command_line(),
        )
    )
    if result.get("world_size", 1) == 1 or _is_main_process():
        _emit(result, as_json, [command.render(result)])


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


reduced_app = typer.Typer(
    no_args_is_help=True,
    help="Reduced Meta Pseudo Labels: store a large teacher's predictions once "
    "(predict), then train a small reduced teacher with the student (train).\n\n"
    "\b\nExample:\n  mpl reduced predict runs/b7/student.safetensors --data data/yfcc/unlabeled --out data/yfcc/pred",
)
app.add_typer(reduced_app, name="reduced")


@reduced_app.command("predict")
def reduced_predict(
    checkpoint: str = typer.Argument(..., help="The large trained teacher (any exchanged checkpoint), or - for stdin."),
    data: str = typer.Option(..., "--data", help="Shard set to predict (run it for the unlabelled and for the labelled set)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: a copy of --data with the prediction stored in every sample."),
    topk: int = typer.Option(0, "--topk", help="Store only the N most likely classes (topk.npy) instead of the full logits."),
    logits: bool = typer.Option(False, "--logits", help="Store the full logits (teacher_logits.npy); the default."),
    dtype: str = typer.Option("float16", "--dtype", help="teacher_logits.npy precision: float16 (half the disk) or float32."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per batch and process."),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Decoding processes per process (default: 0 on CPU, up to 8 on GPU)."
    ),
    max_per_shard: int | None = typer.Option(None, min=1, help="Samples per output shard (default: as in --data)."),
    ignore_data_classes: bool = typer.Option(
        False,
        "--ignore-data-classes",
        help="Unlabelled --data whose class names differ from the teacher's (e.g. an ImageFolder import).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead of the path."),
) -> None:
    """Step 1: the large teacher predicts every image once; its outputs are stored beside the images.

    \b
    Example:
      mpl reduced predict runs/b7/student.safetensors --data data/yfcc/unlabeled --topk 128 --out data/yfcc/unlabeled_pred
    """
    from mpltools.commands import reduced as command

    if logits and topk:
        log.error("--logits and --topk exclude each other: store the full logits or the top N classes.")
        raise typer.Exit(2)
    report = _execute(
        lambda: command.predict(
            Path(resolve_path_arg(checkpoint)),
            data,
            out,
            topk=topk,
            dtype=dtype,
            batch_size=batch_size,
            workers=workers,
            max_per_shard=max_per_shard,
            ignore_data_classes=ignore_data_classes,
            force=force,
            command=_command_line(),
        )
    )
    if report.get("out"):
        _emit(report, as_json, [report["out"]])


@reduced_app.command("train")
def reduced_train(
    recipe: Path = typer.Argument(
        ..., help="TOML recipe whose data.labeled/unlabeled are prediction sets (see recipes/reduced_b7_yfcc.toml)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe key: section.key=value (repeatable)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder (default runs/<recipe name>). Re-running on it resumes."
    ),
    seed: int | None = typer.Option(None, help="Same as --set runtime.seed=N."),
    print_config: bool = typer.Option(
        False,
        "--print-config",
        help="Check model names/kwargs, print the resolved recipe (TOML) and exit (`mpl recipes validate` checks the data too).",
    ),
    force: bool = typer.Option(False, "--force", help="Delete an existing run folder and start over."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report (paths, final metrics) on stdout."),
) -> None:
    """Step 2: train the reduced teacher (an MLP over the stored predictions) and the student with MPL.

    \b
    Example:
      mpl reduced train recipes/reduced_b7_yfcc.toml --out runs/reduced_b7
    """
    resolved = _load_recipe(recipe, overrides, seed)
    if print_config:
        from mpltools.commands.recipe_check import check_models
        from mpltools.config import to_toml

        _execute(lambda: check_models(resolved, str(recipe)))
        typer.echo(to_toml(resolved))
        return
    from mpltools.commands import reduced as command

    run_dir = out or Path("runs") / recipe.stem
    report = _execute(lambda: command.train(resolved, run_dir, force=force, command=_command_line()))
    if report.get("student"):
        _emit(report, as_json, [report["student"]])


# --- plot command goes here ---
plot_app = typer.Typer(
    no_args_is_help=True,
    help="Pictures: learning curves and feedback diagnostics of runs, decision regions of 2-D models (needs matplotlib).\n\n"
    "\b\nExample:\n  mpl plot curves runs/digits --out curves.png",
)
app.add_typer(plot_app, name="plot")


@plot_app.command("curves")
def plot_curves(
    runs: list[Path] = typer.Argument(..., help="Run folders (or their metrics.jsonl files)."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    labels: str | None = typer.Option(
        None, "--labels", help="Comma-separated legend names, one per run (default: the run folders' names)."
    ),
    smooth: int = typer.Option(1, min=1, help="Moving average over this many logged points (losses and h; not accuracies)."),
    dpi: int = typer.Option(100, min=20, max=600, help="Resolution of the PNG."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Learning curves from metrics.jsonl: both networks' losses, h and its baseline, validation top-1; one line per run.

    \b
    Example:
      mpl plot curves runs/digits runs/digits_supervised --labels MPL,supervised --out curves.png
    """
    from mpltools.commands import plot as command

    for path in _execute(lambda: command.run_curves(runs, out, labels=labels, smooth=smooth, dpi=dpi, force=force)):
        typer.echo(path)


plot_app.command("feedback")(plot_feedback)  # defined in mpltools/cli_plot_feedback.py


@plot_app.command("regions")
def plot_regions(
    checkpoints: list[str] = typer.Argument(
        ..., help="Checkpoints with 2-D inputs (e.g. TwoMoon), one panel each; - reads a path from stdin."
    ),
    data: str = typer.Option(
        ..., "--data", help="Shard set of 2-D points to draw (labelled: coloured by class; sets the plotted area)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    labeled: str | None = typer.Option(
        None, "--labeled", help="Labelled shard set; its points are drawn large with a black edge."
    ),
    titles: str | None = typer.Option(
        None, "--titles", help="Comma-separated panel titles, one per checkpoint (default: run folder/file name)."
    ),
    resolution: int = typer.Option(300, min=10, max=2000, help="Grid points per axis."),
    dpi: int = typer.Option(100, min=20, max=600, help="Resolution of the PNG."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Decision regions of 2-D checkpoints over the data's bounding box, like the paper's Figure 2.

    \b
    Example:
      mpl plot regions runs/twomoon/student.safetensors --data data/twomoon/all --out regions.png
    """
    from mpltools.commands import plot as command

    def go():
        paths = [Path(resolve_path_arg(c)) for c in checkpoints]
        return command.run_regions(paths, data, out, labeled=labeled, titles=titles, resolution=resolution, dpi=dpi, force=force)

    for path in _execute(go):
        typer.echo(path)


app.command("env")(env_command)
app.add_typer(recipes_app, name="recipes")


def main(argv: list[str] | None = None) -> None:
    _state["argv"] = list(argv) if argv is not None else None
    app(args=argv, prog_name="mpl")


if __name__ == "__main__":
    main()

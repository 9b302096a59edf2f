"""The command line: declares commands and options, then hands over to `mpltools.commands.*`.

This is the only module that uses Typer. It imports no torch: commands are imported inside the
functions, so `mpl --help` and `mpl --version` stay instant.
"""

from __future__ import annotations

import json
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Callable, List, Optional

import typer

from mpltools import __version__, log
from mpltools.errors import MplError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Meta Pseudo Labels as small Unix-style commands. Results on stdout, logs on stderr.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare data: import datasets, split them, inspect shard sets.")
app.add_typer(data_app, name="data")

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mpl (mpltools) {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show a traceback on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Less output on stderr."),
) -> None:
    _state["debug"] = debug
    log.set_quiet(quiet)


def _command_line() -> str:
    args = _state.get("argv")
    return "mpl " + " ".join(shlex.quote(a) for a in (args if args is not None else sys.argv[1:]))


def _execute(fn: Callable[[], object]) -> object:
    """Run a command; map failures to DESIGN §2's exit codes with a one-paragraph message."""
    try:
        return fn()
    except MplError as exc:
        if _state["debug"]:
            raise
        log.error(exc.message)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        log.error("interrupted.")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - anything unexpected still gets a message and exit 1
        if _state["debug"]:
            raise
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


class SourceName(str, Enum):
    twomoon = "twomoon"
    digits = "digits"
    synthetic = "synthetic"
    imagefolder = "imagefolder"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    svhn = "svhn"
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"


@data_app.command("import")
def data_import(
    source: SourceName = typer.Argument(..., help="twomoon | digits | synthetic (built in) or imagefolder | cifar10 | cifar100 | svhn | mnist | fashion-mnist (needs PATH)."),
    path: Optional[Path] = typer.Argument(None, help="Dataset file or folder (CIFAR .tar.gz or folder, SVHN .mat, ImageFolder root, folder of MNIST-style IDX files)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output shard set folder."),
    seed: int = typer.Option(0, help="Seed for generated data and for the sample order in the shards."),
    split: str = typer.Option("train", "--split", "--part", help="cifar10/cifar100/mnist/fashion-mnist: which part (train or test)."),
    num_samples: Optional[int] = typer.Option(None, min=1, help="twomoon (default 2000) / synthetic (default 1000): number of samples."),
    num_classes: int = typer.Option(10, min=2, help="synthetic: number of classes."),
    image_size: int = typer.Option(32, min=4, help="synthetic: image height and width."),
    channels: int = typer.Option(3, help="synthetic: 1 or 3 channels."),
    noise: float = typer.Option(0.1, min=0.0, help="twomoon: standard deviation of the Gaussian noise."),
    scale: float = typer.Option(1.0, help="twomoon: multiply the coordinates by this."),
    max_per_shard: int = typer.Option(10_000, min=1, help="Samples per tar shard."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report on stdout instead of the path."),
) -> None:
    """Turn a dataset into a shard set (WebDataset tar shards + manifest.json)."""
    from mpltools.commands import data_import as command
    from mpltools.data.sources import SourceOptions

    opts = SourceOptions(seed=seed, split=split, num_samples=num_samples, num_classes=num_classes,
                         image_size=image_size, channels=channels, noise=noise, scale=scale)
    report = _execute(lambda: command.run(source.value, path, out, opts, max_per_shard=max_per_shard,
                                          force=force, command=_command_line()))
    _emit(report, as_json, [report["out"]])


@data_app.command("split")
def data_split(
    src: str = typer.Argument(..., help="A labelled shard set folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; gets labeled/, unlabeled/ and val/."),
    preset: Optional[str] = typer.Option(None, help="cifar10-4k | svhn-1k | imagenet-10pct | imagenet-heldout."),
    labeled_per_class: Optional[int] = typer.Option(None, min=0, help="Labelled samples per class."),
    labeled: Optional[int] = typer.Option(None, "--labeled", min=0, help="Labelled samples in total (spread evenly over classes)."),
    labeled_fraction: Optional[float] = typer.Option(None, help="Fraction of each class that is labelled."),
    val_per_class: Optional[int] = typer.Option(None, min=0, help="Validation samples per class."),
    val: Optional[int] = typer.Option(None, "--val", min=0, help="Validation samples in total (spread evenly)."),
    val_fraction: Optional[float] = typer.Option(None, help="Fraction of each class held out for validation."),
    include_labeled_in_unlabeled: bool = typer.Option(
        False, "--include-labeled-in-unlabeled/--exclude-labeled-from-unlabeled",
        help="Also put the labelled samples in unlabeled/ (the authors' code does; the paper's counts do not). Default: excluded."),
    seed: int = typer.Option(0, help="Seed of the split."),
    keep_hidden_labels: bool = typer.Option(False, "--keep-hidden-labels", help="Keep unlabeled/'s true labels in a side file (unlabeled_hidden_labels.json) for diagnostics; never used for training."),
    max_per_shard: int = typer.Option(10_000, min=1, help="Samples per tar shard."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
) -> None:
    """Seeded, class-balanced split of a labelled shard set into labeled/, unlabeled/ (labels removed) and val/."""
    from mpltools.commands import data_split as command

    def go():
        sizes = command.SplitSizes()
        if preset is not None:
            if preset not in command.PRESETS:
                raise MplError(f"unknown preset {preset!r}; choose one of {', '.join(command.PRESETS)}.", exit_code=2)
            sizes = command.SplitSizes(**vars(command.PRESETS[preset]))
        overrides = dict(labeled_per_class=labeled_per_class, labeled_total=labeled, labeled_fraction=labeled_fraction,
                         val_per_class=val_per_class, val_total=val, val_fraction=val_fraction)
        if any(v is not None for k, v in overrides.items() if k.startswith("labeled")):
            sizes.labeled_per_class = sizes.labeled_total = sizes.labeled_fraction = None
            sizes.labeled_rest = False
        if any(v is not None for k, v in overrides.items() if k.startswith("val")):
            sizes.val_per_class = sizes.val_total = sizes.val_fraction = None
        for k, v in overrides.items():
            if v is not None:
                setattr(sizes, k, v)
        if preset is None and not any(v is not None for k, v in overrides.items() if k.startswith("labeled")):
            raise MplError("say how many samples are labelled: --labeled-per-class, --labeled, --labeled-fraction or --preset.", exit_code=2)
        sizes.include_labeled_in_unlabeled = include_labeled_in_unlabeled
        return command.run(src, out, sizes, seed=seed, preset=preset, max_per_shard=max_per_shard, force=force,
                           command=_command_line(), keep_hidden_labels=keep_hidden_labels)

    report = _execute(go)
    _emit(report, as_json, [report[p]["path"] for p in ("labeled", "unlabeled", "val")])


@data_app.command("info")
def data_info(
    location: str = typer.Argument(..., help="Shard set folder, a brace pattern of shards, or - to read it from stdin."),
    verify: bool = typer.Option(False, "--verify", help="Recompute checksums and fully decode every sample."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Counts, class histogram and input spec of a shard set; --verify checks every byte."""
    from mpltools.commands import data_info as command

    report = _execute(lambda: command.run(resolve_path_arg(location), verify))
    _emit(report, as_json, [command.render(report)])
    if verify and not report["verified"]:
        log.error(f"{report['path']}: {len(report['problems'])} problem(s) found; see above.")
        raise typer.Exit(1)


def _load_recipe(recipe: Optional[Path], overrides: List[str], seed: Optional[int]):
    from mpltools.config import load_recipe

    return _execute(lambda: load_recipe(recipe, overrides, seed=seed))


@app.command("train")
def train(
    recipe: Path = typer.Argument(..., help="TOML recipe (see recipes/)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe key: section.key=value (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<recipe name>). Re-running on it resumes."),
    seed: Optional[int] = typer.Option(None, help="Same as --set runtime.seed=N."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved recipe (TOML) and exit."),
    force: bool = typer.Option(False, "--force", help="Delete an existing run folder and start over."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report (paths, final metrics) on stdout."),
) -> None:
    """Train a teacher and a student with Meta Pseudo Labels (or a baseline: supervised, uda, pseudo-label)."""
    resolved = _load_recipe(recipe, overrides, seed)
    if print_config:
        from mpltools.config import to_toml

        typer.echo(to_toml(resolved))
        return
    from mpltools.commands import train as command

    run_dir = out or Path("runs") / recipe.stem
    report = _execute(lambda: command.run(resolved, run_dir, force=force, command=_command_line()))
    if report.get("student"):  # only the main process prints
        _emit(report, as_json, [report["student"]])


@app.command("finetune")
def finetune(
    checkpoint: str = typer.Argument(..., help="Checkpoint to finetune (usually RUN/student.safetensors), or - for stdin."),
    labeled: str = typer.Option(..., "--labeled", help="Labelled shard set."),
    val: Optional[str] = typer.Option(None, "--val", help="Labelled shard set to evaluate on at the end (optional)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Take the [finetune] section from this recipe."),
    overrides: List[str] = typer.Option([], "--set", help="Override a setting, e.g. finetune.steps=500 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: <checkpoint folder>/finetune)."),
    force: bool = typer.Option(False, "--force", help="Delete an existing output folder and start over."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report on stdout."),
) -> None:
    """Finetune a checkpoint on labelled data (the paper's final phase); prints the new checkpoint's path."""
    from mpltools.commands import finetune as command

    report = _execute(lambda: command.run(Path(resolve_path_arg(checkpoint)), labeled, out, recipe, overrides,
                                          force=force, command=_command_line(), val=val))
    if report.get("finetuned"):
        _emit(report, as_json, [report["finetuned"]])


@app.command("eval")
def evaluate_checkpoint(
    checkpoint: str = typer.Argument(..., help="Any exchanged checkpoint, or - to read its path from stdin."),
    data: str = typer.Option(..., "--data", help="Labelled shard set to evaluate on."),
    real: Optional[Path] = typer.Option(None, "--real", help="JSON file {sample key: [class, ...]} for ReaL-style precision@1."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Also write per-sample probabilities as a shard set here."),
    batch_size: int = typer.Option(256, min=1, help="Evaluation batch size per process."),
    force: bool = typer.Option(False, "--force", help="Overwrite --predictions if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
) -> None:
    """Top-1/top-5, per-class accuracy, loss and calibration of a checkpoint on labelled shards."""
    from mpltools.commands import eval as command

    result = _execute(lambda: command.run(Path(resolve_path_arg(checkpoint)), data, real=real, predictions=predictions,
                                          batch_size=batch_size, force=force, command=_command_line()))
    if result.get("world_size", 1) == 1 or _is_main_process():
        _emit(result, as_json, [command.render(result)])


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


# --- data filter-unlabeled / reduced commands go here ---
@data_app.command("filter-unlabeled")
def data_filter_unlabeled(
    unlabeled: str = typer.Argument(..., help="Shard set to filter (unlabelled; labels of a labelled set are ignored), or - for stdin."),
    model: str = typer.Option(..., "--model", help="Checkpoint that scores the images (any exchanged checkpoint), or - for stdin."),
    out: Path = typer.Option(..., "--out", "-o", help="Output shard set folder (unlabelled; classes = the checkpoint's)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep the K most confident images of each predicted class (paper: 12,800)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Keep only images whose top probability is >= P (Noisy Student: 0.3)."),
    balance: bool = typer.Option(False, "--balance", help="Duplicate the images of classes with fewer than K up to exactly K (Noisy Student's upsampling; copies are <key>-dupN)."),
    exclude: List[str] = typer.Option([], "--exclude", help="Drop images whose decoded pixels equal an image of this shard set (repeatable; e.g. the evaluation set)."),
    near_duplicates: bool = typer.Option(False, "--near-duplicates", help="Also drop near-duplicates of --exclude images (64-bit difference hash)."),
    phash_distance: int = typer.Option(4, "--phash-distance", help="Largest Hamming distance (bits of 64) that counts as a near-duplicate."),
    store_topk: int = typer.Option(0, "--store-topk", help="Store the checkpoint's N most likely classes with each kept sample (topk.npy)."),
    seed: int = typer.Option(0, help="Seed of --balance's choice of which images get one copy more."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images scored per batch and process."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes per process (default: 0 on CPU, up to 8 on GPU)."),
    max_per_shard: int = typer.Option(10_000, min=1, help="Samples per output tar shard."),
    ignore_data_classes: bool = typer.Option(False, "--ignore-data-classes", help="Accept a set whose class names differ from the checkpoint's (e.g. an ImageFolder import of an unlabelled pool)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report (counts per class, duplicates dropped) instead of the path."),
) -> None:
    """Keep the top-K per class and/or confident images of an unlabelled set, without evaluation-set duplicates."""
    from mpltools.commands import data_filter as command

    rule = command.Rule(top_k=top_k, threshold=threshold, balance=balance, near_duplicates=near_duplicates,
                        phash_distance=phash_distance, store_topk=store_topk, seed=seed)
    report = _execute(lambda: command.run(resolve_path_arg(unlabeled), Path(resolve_path_arg(model)), out, rule, exclude=exclude,
                                          batch_size=batch_size, workers=workers, max_per_shard=max_per_shard,
                                          ignore_data_classes=ignore_data_classes, force=force, command=_command_line()))
    if report.get("out"):  # only the main process writes and prints
        _emit(report, as_json, [report["out"]])


reduced_app = typer.Typer(no_args_is_help=True, help="Reduced Meta Pseudo Labels: store a large teacher's predictions once "
                          "(predict), then train a small reduced teacher with the student (train).")
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
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes per process (default: 0 on CPU, up to 8 on GPU)."),
    max_per_shard: Optional[int] = typer.Option(None, min=1, help="Samples per output shard (default: as in --data)."),
    ignore_data_classes: bool = typer.Option(False, "--ignore-data-classes", help="Unlabelled --data whose class names differ from the teacher's (e.g. an ImageFolder import)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead of the path."),
) -> None:
    """Step 1: the large teacher predicts every image once; its outputs are stored beside the images."""
    from mpltools.commands import reduced as command

    if logits and topk:
        log.error("--logits and --topk exclude each other: store the full logits or the top N classes.")
        raise typer.Exit(2)
    report = _execute(lambda: command.predict(Path(resolve_path_arg(checkpoint)), data, out, topk=topk, dtype=dtype,
                                              batch_size=batch_size, workers=workers, max_per_shard=max_per_shard,
                                              ignore_data_classes=ignore_data_classes, force=force,
                                              command=_command_line()))
    if report.get("out"):
        _emit(report, as_json, [report["out"]])


@reduced_app.command("train")
def reduced_train(
    recipe: Path = typer.Argument(..., help="TOML recipe whose data.labeled/unlabeled are prediction sets (see recipes/reduced_b7_yfcc.toml)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a recipe key: section.key=value (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/<recipe name>). Re-running on it resumes."),
    seed: Optional[int] = typer.Option(None, help="Same as --set runtime.seed=N."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved recipe (TOML) and exit."),
    force: bool = typer.Option(False, "--force", help="Delete an existing run folder and start over."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report (paths, final metrics) on stdout."),
) -> None:
    """Step 2: train the reduced teacher (an MLP over the stored predictions) and the student with MPL."""
    resolved = _load_recipe(recipe, overrides, seed)
    if print_config:
        from mpltools.config import to_toml

        typer.echo(to_toml(resolved))
        return
    from mpltools.commands import reduced as command

    run_dir = out or Path("runs") / recipe.stem
    report = _execute(lambda: command.train(resolved, run_dir, force=force, command=_command_line()))
    if report.get("student"):
        _emit(report, as_json, [report["student"]])


# --- plot command goes here ---
plot_app = typer.Typer(no_args_is_help=True, help="Pictures: learning curves of runs, decision regions of 2-D models (needs matplotlib).")
app.add_typer(plot_app, name="plot")


@plot_app.command("curves")
def plot_curves(
    runs: List[Path] = typer.Argument(..., help="Run folders (or their metrics.jsonl files)."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated legend names, one per run (default: the run folders' names)."),
    smooth: int = typer.Option(1, min=1, help="Moving average over this many logged points (losses and h; not accuracies)."),
    dpi: int = typer.Option(100, min=20, max=600, help="Resolution of the PNG."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Learning curves from metrics.jsonl: both networks' losses, h and its baseline, validation top-1; one line per run."""
    from mpltools.commands import plot as command

    for path in _execute(lambda: command.run_curves(runs, out, labels=labels, smooth=smooth, dpi=dpi, force=force)):
        typer.echo(path)


@plot_app.command("regions")
def plot_regions(
    checkpoints: List[str] = typer.Argument(..., help="Checkpoints with 2-D inputs (e.g. TwoMoon), one panel each; - reads a path from stdin."),
    data: str = typer.Option(..., "--data", help="Shard set of 2-D points to draw (labelled: coloured by class; sets the plotted area)."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    labeled: Optional[str] = typer.Option(None, "--labeled", help="Labelled shard set; its points are drawn large with a black edge."),
    titles: Optional[str] = typer.Option(None, "--titles", help="Comma-separated panel titles, one per checkpoint (default: run folder/file name)."),
    resolution: int = typer.Option(300, min=10, max=2000, help="Grid points per axis."),
    dpi: int = typer.Option(100, min=20, max=600, help="Resolution of the PNG."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
) -> None:
    """Decision regions of 2-D checkpoints over the data's bounding box, like the paper's Figure 2."""
    from mpltools.commands import plot as command

    def go():
        paths = [Path(resolve_path_arg(c)) for c in checkpoints]
        return command.run_regions(paths, data, out, labeled=labeled, titles=titles, resolution=resolution, dpi=dpi, force=force)

    for path in _execute(go):
        typer.echo(path)


def main(argv: Optional[List[str]] = None) -> None:
    _state["argv"] = list(argv) if argv is not None else None
    app(args=argv, prog_name="mpl")


if __name__ == "__main__":
    main()

"""`mpl data ...`: import datasets, split them, inspect and filter shard sets."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from mpltools.cli import options
from mpltools.cli.invocation import command_line, emit

app = typer.Typer(
    no_args_is_help=True,
    help="Prepare data: import datasets, split them, inspect shard sets.\n\n"
    "\b\nExample:\n  mpl data import digits --out data/digits/all\n  mpl data info data/digits/all",
)


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
    webdataset = "webdataset"


@app.command("import")
def data_import(
    ctx: typer.Context,
    source: SourceName = typer.Argument(
        ...,
        help="twomoon | digits | synthetic (built in) or imagefolder | cifar10 | cifar100 | svhn | mnist | fashion-mnist | webdataset (needs PATH).",
    ),
    path: str | None = typer.Argument(
        None,
        help="Dataset file or folder (CIFAR .tar.gz or folder, SVHN .mat, ImageFolder root, folder of MNIST-style IDX files); for webdataset, a brace pattern or URL of plain shards.",
    ),
    out: Path = options.out("Output shard set folder."),
    seed: int = options.seed("Seed for generated data and for the sample order in the shards."),
    split: str = typer.Option(
        "train", "--split", "--part", help="cifar10/cifar100/mnist/fashion-mnist: which part (train or test)."
    ),
    num_samples: int | None = typer.Option(
        None, min=1, help="twomoon (default 2000) / synthetic (default 1000): number of samples."
    ),
    num_classes: int = typer.Option(10, min=2, help="synthetic: number of classes."),
    image_size: int = typer.Option(32, min=4, help="synthetic: image height and width."),
    channels: int = typer.Option(3, help="synthetic: 1 or 3 channels."),
    noise: float = typer.Option(0.1, min=0.0, help="twomoon: standard deviation of the Gaussian noise."),
    scale: float = typer.Option(1.0, help="twomoon: multiply the coordinates by this."),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="webdataset: class names in index order, a file with one per line or a,b,c (default: 0..N-1 for integer labels, sorted names for named ones).",
    ),
    max_per_shard: int = options.max_per_shard(),
    force: bool = options.force(),
    as_json: bool = options.as_json("Print a JSON report on stdout instead of the path."),
) -> None:
    """Turn a dataset into a shard set (WebDataset tar shards + manifest.json).

    `webdataset` adopts existing plain shards (webdataset.TarWriter, tar): it scans them and writes a
    copy with a manifest (counts, classes, input shape, sha256) into --out; the originals stay as they are.

    \b
    Example:
      mpl data import digits --out data/digits/all
      mpl data import cifar10 data/cifar-10-binary.tar.gz --split test --out data/cifar10/test
      mpl data import webdataset 'data/raw/shard-{000000..000009}.tar' --classes classes.txt --out data/raw/adopted
    """
    if source is SourceName.webdataset:
        from mpltools.commands import data_import_wds

        report = data_import_wds.run(
            path, out, classes=classes, max_per_shard=max_per_shard, force=force, command=command_line(ctx)
        )
    else:
        from mpltools.commands import data_import as command
        from mpltools.data.sources import SourceOptions

        opts = SourceOptions(
            seed=seed,
            split=split,
            num_samples=num_samples,
            num_classes=num_classes,
            image_size=image_size,
            channels=channels,
            noise=noise,
            scale=scale,
        )
        report = command.run(
            source.value,
            Path(path) if path else None,
            out,
            opts,
            max_per_shard=max_per_shard,
            force=force,
            command=command_line(ctx),
        )
    emit(report, as_json, lambda r: r["out"])


@app.command("split")
def data_split(
    ctx: typer.Context,
    src: str = options.input_path("A labelled shard set: a folder, a brace pattern or a URL of shards."),
    out: Path = options.out("Output folder; gets labeled/, unlabeled/ and val/."),
    preset: str | None = typer.Option(None, help="cifar10-4k | svhn-1k | imagenet-10pct | imagenet-heldout."),
    labeled_per_class: int | None = typer.Option(None, min=0, help="Labelled samples per class."),
    labeled: int | None = typer.Option(None, "--labeled", min=0, help="Labelled samples in total (spread evenly over classes)."),
    labeled_fraction: float | None = typer.Option(None, help="Fraction of each class that is labelled."),
    val_per_class: int | None = typer.Option(None, min=0, help="Validation samples per class."),
    val: int | None = typer.Option(None, "--val", min=0, help="Validation samples in total (spread evenly)."),
    val_fraction: float | None = typer.Option(None, help="Fraction of each class held out for validation."),
    include_labeled_in_unlabeled: bool = typer.Option(
        False,
        "--include-labeled-in-unlabeled/--exclude-labeled-from-unlabeled",
        help="Also put the labelled samples in unlabeled/ (the authors' code does; the paper's counts do not). Default: excluded.",
    ),
    seed: int = options.seed("Seed of the split."),
    keep_hidden_labels: bool = typer.Option(
        False,
        "--keep-hidden-labels",
        help="Keep unlabeled/'s true labels in a side file (unlabeled_hidden_labels.json) for diagnostics; never used for training.",
    ),
    max_per_shard: int = options.max_per_shard(),
    force: bool = options.force(),
    as_json: bool = options.as_json(),
) -> None:
    """Seeded, class-balanced split of a labelled shard set into labeled/, unlabeled/ (labels removed) and val/.

    \b
    Example:
      mpl data split data/digits/all --labeled-per-class 5 --val-per-class 30 --out data/digits/split
      mpl data split data/cifar10/train --preset cifar10-4k --out data/cifar10/4k
    """
    from mpltools.commands import data_split as command

    sizes = command.sizes_from(
        preset,
        labeled_per_class=labeled_per_class,
        labeled_total=labeled,
        labeled_fraction=labeled_fraction,
        val_per_class=val_per_class,
        val_total=val,
        val_fraction=val_fraction,
        include_labeled_in_unlabeled=include_labeled_in_unlabeled,
    )
    report = command.run(
        src,
        out,
        sizes,
        seed=seed,
        preset=preset,
        max_per_shard=max_per_shard,
        force=force,
        command=command_line(ctx),
        keep_hidden_labels=keep_hidden_labels,
    )
    emit(report, as_json, lambda r: "\n".join(r[part]["path"] for part in ("labeled", "unlabeled", "val")))


@app.command("info")
def data_info(
    location: str = options.input_path("Shard set folder, a brace pattern of shards, or - to read it from stdin."),
    verify: bool = typer.Option(False, "--verify", help="Recompute checksums and fully decode every sample."),
    as_json: bool = options.as_json("Print the report as JSON."),
) -> None:
    """Counts, class histogram and input spec of a shard set; --verify checks every byte.

    \b
    Example:
      mpl data info data/digits/split/labeled --verify
    """
    from mpltools.commands import data_info as command

    report = command.run(location, verify)
    emit(report, as_json, command.render)
    command.check_verified(report)


@app.command("manifest")
def data_manifest(
    ctx: typer.Context,
    pattern: str = options.input_path(
        "The shards: a brace pattern, a .tar file or their URLs (http(s)://, s3://, ...), or - to read it from stdin."
    ),
    out: str | None = typer.Option(
        None, "--out", "-o", help="Write the manifest to this file (atomically); default: print it on stdout."
    ),
    classes: str | None = typer.Option(
        None, "--classes", help="Class names in index order, a file with one per line or a,b,c (default: 0..N-1, marked unknown)."
    ),
    force: bool = options.force(),
    as_json: bool = options.as_json("Print a JSON report (shards, samples, bytes, where to put the manifest)."),
) -> None:
    """Write the manifest.json that lets remote shards stream: counts, classes, input shape, sizes, sha256.

    Reads every shard once, one at a time (at most two on disk). Put the result beside the shards;
    remote shards without one are refused, since counting them would download the whole set first.

    \b
    Example:
      mpl data manifest 'https://host/set/shard-{000000..000199}.tar' --out manifest.json
      aws s3 cp manifest.json s3://bucket/set/manifest.json   # then: mpl train ... with data at the URL
    """
    from mpltools.commands import data_manifest as command

    report = command.run(pattern, out, classes=classes, force=force, command=command_line(ctx))
    emit(report, as_json, command.render)


@app.command("filter-unlabeled")
def data_filter_unlabeled(
    ctx: typer.Context,
    unlabeled: str = options.input_path(
        "Shard set to filter (unlabelled; labels of a labelled set are ignored): a folder, brace pattern or URL, or - for stdin."
    ),
    model: str = options.input_path_option(
        "--model", "Checkpoint that scores the images (any exchanged checkpoint), or - for stdin."
    ),
    out: Path = options.out("Output shard set folder (unlabelled; classes = the checkpoint's)."),
    top_k: int | None = typer.Option(
        None, "--top-k", help="Keep the K most confident images of each predicted class (paper: 12,800)."
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Keep only images whose top probability is >= P (Noisy Student: 0.3)."
    ),
    balance: bool = typer.Option(
        False,
        "--balance",
        help="Duplicate the images of classes with fewer than K up to exactly K (Noisy Student's upsampling; copies are <key>-dupN).",
    ),
    exclude: list[str] = options.input_path_option(
        "--exclude",
        "Drop images whose decoded pixels equal an image of this shard set (repeatable; e.g. the evaluation set).",
        repeatable=True,
    ),
    near_duplicates: bool = typer.Option(
        False, "--near-duplicates", help="Also drop near-duplicates of --exclude images (64-bit difference hash)."
    ),
    phash_distance: int = typer.Option(
        4, "--phash-distance", help="Largest Hamming distance (bits of 64) that counts as a near-duplicate."
    ),
    store_topk: int = typer.Option(
        0, "--store-topk", help="Store the checkpoint's N most likely classes with each kept sample (topk.npy)."
    ),
    seed: int = options.seed("Seed of --balance's choice of which images get one copy more."),
    batch_size: int = typer.Option(256, "--batch-size", help="Images scored per batch and process."),
    workers: int | None = options.workers(),
    max_per_shard: int = options.max_per_shard("Samples per output tar shard."),
    ignore_data_classes: bool = options.ignore_data_classes(
        "Accept a set whose class names differ from the checkpoint's (e.g. an ImageFolder import of an unlabelled pool)."
    ),
    force: bool = options.force(),
    as_json: bool = options.as_json("Print a JSON report (counts per class, duplicates dropped) instead of the path."),
) -> None:
    """Keep the top-K per class and/or confident images of an unlabelled set, without evaluation-set duplicates.

    \b
    Example:
      mpl data filter-unlabeled data/jft/shards --model runs/b0/student.safetensors --threshold 0.3 --top-k 130000 --balance --exclude data/imagenet/val_shards --out data/jft/filtered
    """
    from mpltools.commands import data_filter as command

    rule = command.Rule(
        top_k=top_k,
        threshold=threshold,
        balance=balance,
        near_duplicates=near_duplicates,
        phash_distance=phash_distance,
        store_topk=store_topk,
        seed=seed,
    )
    report = command.run(
        unlabeled,
        Path(model),
        out,
        rule,
        exclude=exclude,
        batch_size=batch_size,
        workers=workers,
        max_per_shard=max_per_shard,
        ignore_data_classes=ignore_data_classes,
        force=force,
        command=command_line(ctx),
    )
    emit(report, as_json, lambda r: r["out"])

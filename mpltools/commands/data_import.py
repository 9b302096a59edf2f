"""`mpl data import SOURCE [PATH] --out DIR`: a built-in source or a user dataset -> a shard set."""

from __future__ import annotations

from pathlib import Path

from mpltools import __version__, log
from mpltools.atomic import atomic_dir, check_can_write
from mpltools.data.format import Manifest
from mpltools.data.shards import ShardWriter
from mpltools.data.sources import SourceOptions, load_source


def run(
    source: str, path: Path | None, out: Path, options: SourceOptions, *, max_per_shard: int, force: bool, command: str
) -> dict:
    check_can_write(out, force)  # before loading (which can take long)
    src = load_source(source, path, options)
    log.info(f"importing {src.count:,} samples of {source} ({len(src.classes)} classes) into {out}")
    provenance = {
        "command": command,
        "source": source,
        "source_path_name": path.name if path else None,
        "seed": options.seed,
        "details": src.details,
        "mpltools_version": __version__,
    }
    with atomic_dir(out, force=force) as tmp:
        writer = ShardWriter(
            tmp, input_spec=src.input_spec, classes=src.classes, labeled=True, provenance=provenance, max_per_shard=max_per_shard
        )
        with log.progress("import", total=src.count, unit="samples") as bar:
            for sample in src.samples():
                writer.write(sample)
                bar.advance()
        manifest = Manifest(writer.close())
    return {
        "out": str(out),
        "num_samples": manifest.num_samples,
        "classes": manifest.classes,
        "class_counts": manifest.class_counts,
        "shards": manifest.num_shards,
    }

"""`mpl data import webdataset PATTERN --out DIR`: adopt plain WebDataset shards into a shard set.

The shards (a brace pattern, a file, or a URL; see data/locations.py) are read twice: a scan
(data/wdscan.py: counts, labels, classes, one input shape) and a copy. DIR gets a self-contained
shard set: the samples rewritten into `shard-%06d.tar` with labels as `cls` members (from `cls`,
`label.txt`, `label` or `json`) and uint8 `.npy` images as png, plus a manifest.json with the sha256
of each new shard. The originals are left untouched. A copy rather than links to the originals is what
keeps every other command working: they read a folder whose manifest lists its shards by name and
whose labels are `cls` members. Other members (captions, metadata) are not carried over; the log says which.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np

from mpltools import __version__, log
from mpltools.atomic import atomic_dir, check_can_write
from mpltools.data.codecs import Sample, encode_png
from mpltools.data.format import Manifest
from mpltools.data.locations import resolve
from mpltools.data.shards import ShardWriter, read_shard
from mpltools.data.tarindex import ShardError
from mpltools.data.wdscan import LABEL_MEMBERS, raw_label, scan_shards
from mpltools.errors import UsageError


def parse_classes(value: str | None) -> list[str] | None:
    """`--classes`: a file with one class name per line, or a comma-separated list."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        where = f"--classes file {path}"
    else:
        names = [n.strip() for n in value.split(",") if n.strip()]
        where = "--classes"
    if len(names) < 2:
        raise UsageError(f"{where} names {len(names)} class(es); give at least two (a file with one name per line, or a,b,c).")
    if len(set(names)) != len(names):
        dup = next(n for n, c in Counter(names).items() if c > 1)
        raise UsageError(f"{where} names the class {dup!r} twice.")
    return names


def run(pattern: str | None, out: Path, *, classes: str | None, max_per_shard: int, force: bool, command: str) -> dict:
    if pattern is None:
        raise UsageError(
            "`mpl data import webdataset` needs the shards: a brace pattern or URL, e.g. 'data/x/shard-{000000..000009}.tar'."
        )
    check_can_write(out, force)
    class_names = parse_classes(classes)
    paths, names = resolve(pattern)
    log.info(f"scanning {len(paths)} shard(s) of {pattern}")
    scan = scan_shards(paths, names, adopt=True, classes=class_names)
    provenance = {
        "command": command,
        "source": "webdataset",
        "source_pattern": pattern,
        "source_shards": [Path(n).name if "://" not in n else n for n in names],
        "mpltools_version": __version__,
    }
    dropped: Counter = Counter()
    with atomic_dir(out, force=force) as tmp:
        writer = ShardWriter(
            tmp,
            input_spec=scan.input_spec,
            classes=scan.classes,
            labeled=scan.labeled,
            provenance=provenance,
            max_per_shard=max_per_shard,
        )
        with log.progress("import", total=sum(scan.counts), unit="samples") as bar:
            for path, name in zip(paths, names):
                for sample in read_shard(path):
                    label = raw_label(sample, name, adopt=True)
                    dropped.update(ext for ext in sample.extras if ext not in LABEL_MEMBERS)
                    ext, data = sample.ext, sample.data
                    if ext == "npy" and scan.input_spec.kind == "image":
                        ext, data = "png", _npy_to_png(sample, name)
                    writer.write(
                        Sample(
                            sample.key, "jpg" if ext == "jpeg" else ext, data, None if label is None else scan.label_index[label]
                        )
                    )
                    bar.advance()
        manifest = Manifest(writer.close())
    if dropped:
        log.warn(f"members not carried into {out}: " + ", ".join(f".{e} ({n}×)" for e, n in sorted(dropped.items())))
    return {
        "out": str(out),
        "num_samples": manifest.num_samples,
        "labeled": manifest.labeled,
        "classes": manifest.classes,
        "class_counts": manifest.class_counts,
        "shards": manifest.num_shards,
    }


def _npy_to_png(sample: Sample, where: str) -> bytes:
    array = np.load(io.BytesIO(sample.data), allow_pickle=False)
    if array.dtype != np.uint8:
        raise ShardError(
            f"{where}: sample {sample.key!r} is a {array.dtype} .npy image; only uint8 arrays can be "
            "adopted as images (convert them to png/jpg, or to uint8, first)."
        )
    return encode_png(array if array.ndim == 3 else array[:, :, None])

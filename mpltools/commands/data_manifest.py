"""`mpl data manifest PATTERN [--out FILE]`: the manifest.json that lets plain shards be streamed where they are.

Remote shards (`http(s)://`, `s3://`, ...) are read one by one, each checked against the manifest.json
beside them: its per-shard sample counts lay out the epoch and make resume exact before a single shard
is downloaded, and its sha256 and sizes catch a changed or cut-off shard (data/locations.py, data/remote.py).
A remote set without one is refused, since counting its samples would mean downloading all of it
before the first step. This command writes that manifest once: it reads every shard once, in order, a
remote one streamed into the private folder while the next downloads, and deleted as soon as it is read
(at most two shards on disk, whatever the size of the set). Upload the result beside the shards (for
`pipe:CMD` shards: where CMD prints it when it names manifest.json instead of the shard).

The shards are described as they are, not rewritten: labels in `cls` members, inputs as png/jpg/jpeg or
1-D .npy vectors, one input shape. Shards in other conventions (labels in `json`, 2-D arrays) need a
copy, which `mpl data import webdataset` makes. Without --classes, integer labels are named "0".."N-1"
and the manifest says the class names are unknown, as for a scan.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mpltools import __version__, log
from mpltools.atomic import atomic_file, check_can_write
from mpltools.commands.data_import_wds import parse_classes
from mpltools.data import fetching
from mpltools.data.format import MANIFEST, build_manifest, check_manifest, shard_entry
from mpltools.data.locations import is_folder_url, pipe_manifest_command, resolve, shard_file_name
from mpltools.data.shards import sha256_file
from mpltools.data.wdscan import Scanner
from mpltools.errors import UsageError


def run(pattern: str, out: str | None, *, classes: str | None, force: bool, command: str) -> dict:
    # 1. Everything the command needs is checked before the first shard is read: the shards' one folder, the output.
    if is_folder_url(pattern) or Path(pattern).is_dir():
        tars = sorted(p.name for p in Path(pattern).glob("*.tar")) if Path(pattern).is_dir() else []
        held = f" (it holds {len(tars)} .tar file(s), {tars[0]} .. {tars[-1]})" if tars else ""
        raise UsageError(
            f"{pattern} is a folder{held}: name its shards with a brace pattern, e.g. "
            f"'{pattern.rstrip('/')}/shard-{{000000..000009}}.tar' (a folder is read through the manifest.json this writes)."
        )
    class_names = parse_classes(classes)
    to_file = out not in (None, "-")
    if to_file:
        check_can_write(Path(out), force)
    refs, names = resolve(pattern)
    place, files = _beside(pattern, names)

    # 2. Every shard once, in order: its checksum and size, then its samples (Scanner checks labels and shapes).
    scanner = Scanner(adopt=False, classes=class_names)
    shards, total_bytes = [], 0
    log.info(f"reading {len(refs)} shard(s) of {pattern} once, one at a time")
    start = time.perf_counter()
    with log.progress("manifest", total=len(refs), unit="shards") as bar:
        for i in fetching.ahead(refs, range(len(refs))):
            with fetching.fetched(refs[i]) as local:
                digest, size = sha256_file(local), Path(local).stat().st_size
                count = scanner.add(local, names[i])
            shards.append(shard_entry(files[i], count, digest, size))
            total_bytes += size
            bar.advance(extra=f"{total_bytes / 1e6 / max(time.perf_counter() - start, 1e-9):.1f} MB/s")
    scan = scanner.finish()

    # 3. The manifest, checked as every reader will check it, written atomically (or printed).
    manifest = build_manifest(
        num_samples=sum(scan.counts),
        labeled=scan.labeled,
        classes=scan.classes,
        class_counts=scan.class_counts,
        input_spec=scan.input_spec.to_json(),
        extras=scan.extras,
        shards=shards,
        provenance={"command": command, "source": "webdataset", "source_pattern": pattern, "mpltools_version": __version__},
        **({"classes_unknown": True} if class_names is None else {}),
    )
    check_manifest(manifest, "the manifest written")
    if to_file:
        with atomic_file(Path(out), force=force) as tmp:
            tmp.write_text(render_manifest(manifest), encoding="utf-8")
        where = f"where `{place[len('pipe:') :]}` prints it" if place.startswith("pipe:") else f"at {place} (beside the shards)"
        log.info(f"wrote {out}; put it {where}")
    return {
        "out": out if to_file else "-",
        "manifest": None if to_file else manifest,
        "place_at": place,
        "shards": len(shards),
        "num_samples": sum(scan.counts),
        "bytes": total_bytes,
        "labeled": scan.labeled,
        "classes": scan.classes,
        "input": scan.input_spec.to_json(),
    }


def render_manifest(manifest: dict) -> str:
    """The manifest.json text, as the shard writer writes it."""
    return json.dumps(manifest, indent=1) + "\n"


def render(report: dict) -> str:
    """Without --json: the manifest itself when it goes to stdout, else the file written."""
    return render_manifest(report["manifest"]).rstrip("\n") if report["manifest"] is not None else report["out"]


def _beside(pattern: str, names: list[str]) -> tuple[str, list[str]]:
    """Where readers look for the manifest (the shards' one folder or URL prefix; for `pipe:` shards the command that
    names manifest.json instead of the shard) and the shards' file names, which the manifest lists."""
    files = [shard_file_name(n) for n in names]
    if all(n.startswith("pipe:") for n in names):
        place = pipe_manifest_command(names)
        if place is None:
            raise UsageError(
                f"{pattern}: readers find the manifest of `pipe:` shards by running their command with the "
                "shard's file name (its last NAME.tar, named once) replaced by manifest.json, so the commands "
                "must differ only in that name."
            )
    else:
        folders = {n.rsplit("/", 1)[0] if "://" in n else str(Path(n).parent) for n in names}
        if len(folders) != 1:
            raise UsageError(
                f"{pattern}: the shards are in {len(folders)} folders; a manifest.json describes the shards "
                "of one folder beside it. Run the command once per folder."
            )
        place = f"{folders.pop()}/{MANIFEST}"
    if len(set(files)) != len(files):
        raise UsageError(f"{pattern}: names a shard twice; name each shard once.")
    return place, files

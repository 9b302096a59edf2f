"""The shard-set format (DESIGN §3): the one module that knows `manifest.json`'s field names.

A shard set is a folder holding `shard-000000.tar`, `shard-000001.tar`, ... and `manifest.json`.
A sample is the group of consecutive tar members `<key>.<ext>`: one input (`INPUT_EXTENSIONS`),
`cls` (ASCII integer label; absent in unlabelled sets) and optional extras such as `logits.npy`.
The tar members are read and written by data/shards.py; this module builds, reads, checks and
writes the manifest, and `ManifestFields` gives every reader its fields by name. A change to the
manifest's layout bumps `FORMAT_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import NamedTuple

from mpltools.data.codecs import InputSpec
from mpltools.data.tarindex import ShardError

FORMAT = "mpltools.shardset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-%06d.tar"
INPUT_EXTENSIONS = ("png", "jpg", "jpeg", "npy")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ShardEntry(NamedTuple):
    """One shard's line in the manifest, read by name (`bytes` is absent from manifests written before it existed)."""

    name: str
    count: int
    sha256: str | None
    bytes: int | None


def shard_entry(name: str, count: int, sha256: str | None, size: int) -> dict:
    """One shard's line in the manifest: its file name, samples, checksum and size in bytes."""
    return {"name": name, "count": count, "sha256": sha256, "bytes": size}


def build_manifest(*, num_samples: int, labeled: bool, classes: list[str], class_counts: list[int] | None, input_spec: dict,
                   extras: list[str], shards: list[dict], provenance: dict, **more) -> dict:
    """A manifest dict (ShardWriter's, and the one a scan of manifest-less shards stands in for); `more` adds fields."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "num_samples": num_samples, "labeled": labeled,
            "classes": classes, "class_counts": class_counts, "input": input_spec, "extras": extras, "shards": shards,
            "provenance": provenance, **more}


def scanned_manifest(source: str, names: list[str], counts: list[int], *, labeled: bool, classes: list[str],
                     class_counts: list[int] | None, input_spec: dict) -> dict:
    """What a scan of manifest-less shards found, as the manifest a reader stands in for it (never written): no
    checksums; provenance says it was scanned; an unlabelled scan knows no class names."""
    return build_manifest(num_samples=sum(counts), labeled=labeled, classes=classes, class_counts=class_counts,
                          input_spec=input_spec, extras=[],
                          shards=[{"name": n, "count": c, "sha256": None} for n, c in zip(names, counts)],
                          provenance={"source": source, "scanned": True}, classes_unknown=not labeled)


def write_manifest(folder: Path, manifest: dict) -> None:
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def read_manifest(folder: Path) -> tuple[dict, str]:
    """The checked manifest of a shard set folder and the sha256 of its bytes; ShardError names what is wrong."""
    path = Path(folder) / MANIFEST
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path} is not valid JSON ({exc}); re-create the shard set.") from None
    check_manifest(manifest, path)
    return manifest, hashlib.sha256(raw).hexdigest()


def check_manifest(m: object, path: Path | str) -> None:
    """Raise ShardError naming `path` and the field when the manifest cannot describe a shard set: first its
    structure (fields and their types), then the values a hand-edited or damaged manifest can get wrong."""

    def bad(what: str) -> ShardError:
        return ShardError(f"{path} is malformed: {what}. Re-create the shard set with `mpl data import`/`split`.")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise bad(f"'format' must be {FORMAT!r}")
    if m.get("format_version") != FORMAT_VERSION:
        raise bad(f"format_version {m.get('format_version')!r} is not supported (this mpltools reads {FORMAT_VERSION})")
    for key, typ in (("num_samples", int), ("labeled", bool), ("classes", list), ("input", dict), ("shards", list)):
        if not isinstance(m.get(key), typ):
            raise bad(f"field {key!r} is missing or not a {typ.__name__}")
    for s in m["shards"]:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("count"), int)
                and isinstance(s.get("sha256"), str)) or "/" in s["name"] or s["name"].startswith("."):
            raise bad(f"shard entry {s!r} needs a plain 'name', a 'count' and a 'sha256'")
    if sum(s["count"] for s in m["shards"]) != m["num_samples"]:
        raise bad("the per-shard counts do not add up to num_samples")
    if m["input"].get("kind") not in ("image", "vector"):
        raise bad("input.kind must be 'image' or 'vector'")
    _check_values(m, bad)


def _check_values(m: dict, bad) -> None:
    if m["num_samples"] < 0 or isinstance(m["num_samples"], bool):
        raise bad(f"num_samples must be >= 0, not {m['num_samples']}")
    for s in m["shards"]:
        if s["count"] < 0:
            raise bad(f"shard {s['name']!r} has a negative count {s['count']}")
        if s["sha256"] and not _SHA256.match(s["sha256"]):
            raise bad(f"shard {s['name']!r} has a malformed sha256 {s['sha256']!r}")
    classes = m["classes"]
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise bad("'classes' must be a list of distinct non-empty names")
    counts = m.get("class_counts")
    if counts is not None:
        if not (isinstance(counts, list) and len(counts) == len(classes)
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)):
            raise bad("'class_counts' must hold one count >= 0 per class")
    shape = m["input"].get("shape")
    if shape is not None:
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise bad(f"input.shape must be a list of positive integers, not {shape!r}")
        if m["input"]["kind"] == "image" and len(shape) != 3:
            raise bad(f"input.shape of images must be [H, W, C], not {shape!r}")
        if m["input"]["kind"] == "vector" and len(shape) != 1:
            raise bad(f"input.shape of vectors must be [D], not {shape!r}")


def shard_names(m: dict) -> list[str]:
    return [s["name"] for s in m["shards"]]


def sub_manifest(m: dict, names: list[str]) -> dict:
    """`m` restricted to the named shards (in that order); per-class counts are then unknown, so None (not faked)."""
    entries = {s["name"]: s for s in m["shards"]}
    chosen = [entries[n] for n in names]
    if chosen == m["shards"]:
        return m
    return {**m, "shards": chosen, "num_samples": sum(s["count"] for s in chosen), "class_counts": None}


class ManifestFields:
    """The manifest's fields by name, for a reader holding `self.manifest` (a manifest dict, or None for a
    manifest-less set, which knows only its shard files)."""

    manifest: dict | None

    @property
    def num_samples(self) -> int | None:
        return self.manifest["num_samples"] if self.manifest else None

    @property
    def labeled(self) -> bool | None:
        return self.manifest["labeled"] if self.manifest else None

    @property
    def classes(self) -> list[str] | None:
        return self.manifest["classes"] if self.manifest else None

    @property
    def classes_unknown(self) -> bool:
        """A set whose class names are not known: unlabelled and naming no classes (adopted without --classes), or
        scanned without a manifest (its "names" are the label numbers found). It fits any label set of its size."""
        if not self.manifest:
            return False
        return self.scanned or bool(self.manifest.get("classes_unknown")) or not (self.labeled or self.classes)

    @property
    def num_classes(self) -> int | None:
        return len(self.manifest["classes"]) if self.manifest else None

    @property
    def input_spec(self) -> InputSpec | None:
        return InputSpec.from_json(self.manifest["input"]) if self.manifest else None

    @property
    def shard_counts(self) -> list[int] | None:
        return [s["count"] for s in self.manifest["shards"]] if self.manifest else None

    @property
    def shard_checksums(self) -> list[str] | None:
        return [s["sha256"] for s in self.manifest["shards"]] if self.manifest else None

    @property
    def class_counts(self) -> list[int] | None:
        return self.manifest.get("class_counts") if self.manifest else None

    @property
    def extras(self) -> list[str]:
        return list(self.manifest.get("extras", [])) if self.manifest else []

    @property
    def provenance(self) -> dict:
        return (self.manifest.get("provenance") or {}) if self.manifest else {}

    @property
    def scanned(self) -> bool:
        """The manifest stands in for a scan of manifest-less shards (it was not read from a manifest.json)."""
        return bool(self.provenance.get("scanned"))

    @property
    def num_shards(self) -> int | None:
        return len(self.manifest["shards"]) if self.manifest else None

    @property
    def shard_entries(self) -> list[ShardEntry] | None:
        if not self.manifest:
            return None
        return [ShardEntry(s["name"], s["count"], s["sha256"], s.get("bytes")) for s in self.manifest["shards"]]


class Manifest(ManifestFields):
    """A manifest dict read through its fields' names (`Manifest(writer.close()).num_samples`)."""

    def __init__(self, manifest: dict):
        self.manifest = manifest

"""The one schema check of `manifest.json`, shared by every reader (issue 9).

`shards._check_manifest` checks the structure (fields and their types); this adds the values a
hand-edited or damaged manifest can get wrong: negative counts, a bad input spec, bad class lists.
"""

from __future__ import annotations

import re
from pathlib import Path

from mpltools.errors import MplError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_manifest(m: object, path: Path) -> None:
    """Raise ShardError naming `path` and the field when the manifest cannot describe a shard set."""
    from mpltools.data.shards import ShardError, _check_manifest

    _check_manifest(m, path)

    def bad(what: str) -> MplError:
        return ShardError(f"{path} is malformed: {what}. Re-create the shard set with `mpl data import`/`split`.")

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


def build_manifest(*, num_samples: int, labeled: bool, classes: list[str], class_counts: list[int] | None, input_spec: dict,
                   extras: list[str], shards: list[dict], provenance: dict, **more) -> dict:
    """A manifest dict (ShardWriter's, and the one a scan of manifest-less shards stands in for); `more` adds fields."""
    from mpltools.data.shards import FORMAT, FORMAT_VERSION

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "num_samples": num_samples, "labeled": labeled,
            "classes": classes, "class_counts": class_counts, "input": input_spec, "extras": extras, "shards": shards,
            "provenance": provenance, **more}


def shard_names(m: dict) -> list[str]:
    return [s["name"] for s in m["shards"]]


def sub_manifest(m: dict, names: list[str]) -> dict:
    """`m` restricted to the named shards (in that order); per-class counts are then unknown, so None (not faked)."""
    entries = {s["name"]: s for s in m["shards"]}
    chosen = [entries[n] for n in names]
    if chosen == m["shards"]:
        return m
    return {**m, "shards": chosen, "num_samples": sum(s["count"] for s in chosen), "class_counts": None}

"""Opening a shard set by what a user names: a folder with `manifest.json` (data/shards.py), or a brace
pattern, a shard file or a URL of shards (data/locations.py)."""

from __future__ import annotations

from pathlib import Path

from mpltools.data.locations import looks_like_shards, open_location
from mpltools.data.shards import ShardSet, open_folder


def open_shard_set(location: str | Path) -> ShardSet:
    """Open a shard set folder (validating its manifest), or a brace pattern / URL of shards."""
    text = str(location)
    if not Path(text).is_dir() and looks_like_shards(text):
        return open_location(text)
    return open_folder(Path(location))

"""Shard sets named the WebDataset way: brace patterns, `file://`, `http(s)://`, fsspec URLs and `pipe:`.

`open_shard_set` hands every location that is not a folder to `open_location`. A location is kept as a
string until it is known to be local (`Path` would turn `https://h/x` into `https:/h/x`).

- Local shards (`d/shard-{000000..000009}.tar`, `file:///abs/d/shard-000000.tar`) are read in place.
- Remote shards (`http://`, `https://`; `s3://`, `gs://`, `hf://` and other fsspec URLs when the
  `remote` extra is installed) and `pipe:CMD` output are not downloaded when the set is opened: the set
  holds a `RemoteShard` per URL, and each reader fetches the shards it reads one at a time, checked
  against the manifest before it reads them (data/remote.py). `pipe:` runs a shell command, so it is
  accepted only when the user typed that location on the command line together with `--allow-pipe`
  (never from a recipe, a manifest or any other file).
- A remote URL that names neither a `.tar` nor a brace pattern is a folder: its `manifest.json` lists the shards.
- The metadata a reader needs (classes, input spec, counts) comes from a `manifest.json` beside the
  shards (same folder, same URL prefix) that lists them, with its sha256 checksums. Remote shards
  without one are refused (exit 2, naming `mpl data manifest`, which writes it): the counts of a
  manifest-less set are known only after reading every shard, and a stream must not wait for that.
  `pipe:` shards' manifest is what the same command prints with the shard's file name replaced by
  manifest.json (`pipe:curl -s https://h/set/manifest.json` for `pipe:curl -s https://h/set/shard-000000.tar`).
  Local shards and `pipe:` output without one are scanned once (data/wdscan.py), and then there are no
  checksums to verify.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import urllib.parse
from pathlib import Path

from mpltools import log
from mpltools.data import pipes, remote, verify
from mpltools.data.format import MANIFEST, Manifest, check_manifest, scanned_manifest, shard_names, sub_manifest
from mpltools.data.remote import RemoteShard
from mpltools.data.shards import ShardSet
from mpltools.data.tarindex import ShardError
from mpltools.errors import UsageError

REMOTE = ("http://", "https://")
NO_CHECKSUMS = "a scan of the shards (no manifest.json beside them, so no checksums)"


def looks_like_shards(text: str) -> bool:
    """True for what `open_location` handles: a pattern, a .tar file or a URL (a local folder is not)."""
    return "{" in text or text.endswith(".tar") or "://" in text or text.startswith("pipe:")


def _expand(text: str) -> list[str]:
    import braceexpand

    try:
        urls = list(braceexpand.braceexpand(text))
    except Exception as exc:  # noqa: BLE001 - braceexpand raises plain errors on unbalanced braces
        raise UsageError(f"{text}: not a valid brace pattern ({exc}); write e.g. data/x/shard-{{000000..000009}}.tar.") from None
    if not urls or not all(urls):
        raise UsageError(f"{text}: the pattern names no shard; write e.g. data/x/shard-{{000000..000009}}.tar.")
    return urls


def _kind(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    if url.startswith("file://"):
        return "file"
    if "://" in url:
        remote.check_scheme(url)  # exit 2 naming the extra when an fsspec backend is missing
        return "remote"
    return "local"


def _local_path(url: str) -> Path:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)) if url.startswith("file://") else Path(url)


def is_folder_url(text: str) -> bool:
    """A URL that names neither a .tar file nor a pattern: a folder with a manifest.json (`http://host/set/`)."""
    return "://" in text and not text.startswith(("pipe:", "file://")) and "{" not in text and not text.endswith(".tar")


def _manifest_at(where: str, raw: bytes) -> dict:
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{where} is not valid JSON ({exc}); fix or remove it, or re-create the shard set.") from None
    check_manifest(manifest, where)
    return manifest


_TAR_NAME = re.compile(r"[^\s/'\"=:]+\.tar")


def shard_file_name(url: str) -> str | None:
    """The file name of a shard: the last path component of a URL or path; for `pipe:CMD` the last `NAME.tar` in CMD."""
    if url.startswith("pipe:"):
        found = _TAR_NAME.findall(url)
        return found[-1] if found else None
    return posixpath.basename(urllib.parse.urlparse(url).path) if "://" in url else Path(url).name


def pipe_manifest_command(urls: list[str]) -> str | None:
    """The `pipe:` command that prints the manifest of `pipe:` shards: their command with the shard's file name (its
    last `NAME.tar`) replaced by manifest.json, when the commands differ only in that name; else None."""
    commands = set()
    for url in urls:
        found = list(_TAR_NAME.finditer(url))
        if not found or url.count(found[-1].group()) != 1:
            return None
        commands.add(url[: found[-1].start()] + MANIFEST + url[found[-1].end():])
    return commands.pop() if len(commands) == 1 else None


def _pipe_manifest(urls: list[str]) -> tuple[dict, str, bytes] | None:
    """`pipe:` shards' manifest, printed by the same command naming manifest.json instead of the shard (the user typed
    that command with --allow-pipe; only the file name differs); None when there is no such command or it fails."""
    where = pipe_manifest_command(urls)
    if where is None:
        return None
    try:
        raw = remote.read_bytes(where)
    except ShardError as exc:
        log.info(f"no manifest from {where} ({exc.message})")
        return None
    try:
        return _manifest_at(where, raw), where, raw
    except ShardError as exc:
        log.warn(f"ignoring what {where} printed: {exc.message}")
        return None


def _neighbour_manifest(urls: list[str], kinds: list[str]) -> tuple[dict, str, bytes] | None:
    """The manifest.json in the same folder / under the same URL prefix as all the shards, if there is one (for
    `pipe:` shards: what their command prints for manifest.json instead of the shard's name)."""
    if "pipe" in kinds:
        return _pipe_manifest(urls) if all(k == "pipe" for k in kinds) else None
    if all(k in ("local", "file") for k in kinds):
        folders = {_local_path(u).parent for u in urls}
        if len(folders) != 1 or not (folders.pop() / MANIFEST).is_file():
            return None
        where = str(_local_path(urls[0]).parent / MANIFEST)
        raw = Path(where).read_bytes()
    else:
        prefixes = {u.rsplit("/", 1)[0] for u in urls}
        if len(prefixes) != 1:
            return None
        where = f"{prefixes.pop()}/{MANIFEST}"
        raw = remote.read_bytes(where, missing_ok=True)
        if raw is None:
            return None  # no manifest there: scan instead
    return _manifest_at(where, raw), where, raw


def _select(manifest: dict, urls: list[str]) -> tuple[dict | None, str | None]:
    """The manifest restricted to the shards the pattern names, or (None, the first shard it does not list)."""
    names = [shard_file_name(u) for u in urls]
    missing = [n for n in names if n not in shard_names(manifest)]
    if missing:
        return None, missing[0]
    return sub_manifest(manifest, names), None


def resolve(text: str) -> tuple[list, list[str]]:
    """The shards of a pattern or URL (local paths, or `RemoteShard`s that readers fetch one at a time) and the
    names messages use. Nothing remote is downloaded here."""
    if text.startswith("pipe:") and not pipes.allowed(text):
        raise UsageError(f"{text}: `pipe:` locations run a shell command, so they are accepted only when typed on the "
                         "command line together with --allow-pipe (never from a recipe or a manifest).")
    urls = _expand(text)
    kinds = [_kind(u) for u in urls]
    local = [_local_path(u) for u, k in zip(urls, kinds) if k in ("local", "file")]
    present = [p for p in local if p.is_file()]
    if local and not present:
        hint = " (`*` and `?` are not expanded: name the shards with braces)" if any(c in text for c in "*?[") else ""
        raise ShardError(f"no shard matches {text}: none of the {len(local)} file(s) it names exists (e.g. {local[0]}); "
                         f"check the folder and the numbers in the braces{hint}.")
    if len(present) != len(local):
        absent = next(p for p in local if not p.is_file())
        raise ShardError(f"shard file {absent} does not exist (one of the {len(local)} the pattern {text} names).")
    if any(k in ("remote", "pipe") for k in kinds):
        remote.prepare()  # the private folder, before any DataLoader worker is forked
    refs = [_local_path(u) if k in ("local", "file") else RemoteShard(u) for u, k in zip(urls, kinds)]
    names = [str(_local_path(u)) if k in ("local", "file") else u for u, k in zip(urls, kinds)]
    return refs, names


def _open_folder_url(text: str) -> ShardSet:
    """`http://host/set/` (or s3://bucket/set): the shards its manifest.json lists, read from nothing else."""
    folder = text.rstrip("/")
    _kind(folder + "/" + MANIFEST)
    remote.prepare()
    where = f"{folder}/{MANIFEST}"
    raw = remote.read_bytes(where, missing_ok=True)
    if raw is None:
        raise ShardError(f"{text}: there is no {where}; name the shards themselves (e.g. {folder}/shard-{{000000..000009}}.tar) "
                         "or give the folder URL of a shard set.")
    manifest = _manifest_at(where, raw)
    entries = Manifest(manifest).shard_entries
    if not entries:
        raise ShardError(f"{text}: {where} lists no shards; nothing to read.")
    refs = [RemoteShard(f"{folder}/{s.name}", s.sha256, s.bytes, where) for s in entries]
    return ShardSet(root=text, shard_paths=refs, manifest=manifest, manifest_sha256=hashlib.sha256(raw).hexdigest(),
                    origin=where)


def _refuse_unlisted_remote(text: str, refs: list, manifest_at: str | None, unlisted: str | None) -> None:
    """Remote shards (not `pipe:`) without a manifest.json listing them are refused: their counts are known only
    after every shard has been downloaded, so the first step would wait for the whole set (issue: streaming)."""
    urls = [r.url for r in refs if isinstance(r, RemoteShard) and not r.url.startswith("pipe:")]
    if not urls:
        return
    prefixes = {u.rsplit("/", 1)[0] for u in urls}
    beside = f"{prefixes.pop()}/{MANIFEST}" if len(prefixes) == 1 else None
    why = (f"{manifest_at} does not list {unlisted}" if manifest_at else
           f"there is no {beside}" if beside else "they are not in one folder, so no manifest.json lists them")
    place = (f"upload it as {beside}" if beside else "put the shards in one folder with it")
    raise UsageError(f"{text}: {why}. mpltools streams remote shards one by one and needs their sample counts and "
                     "checksums before the first step; without a manifest it would have to download the whole set "
                     f"first. Write one with `mpl data manifest '{text}' --out manifest.json` (it reads each shard once) "
                     f"and {place}; or copy the set with `mpl data import webdataset`.")


def open_location(text: str) -> ShardSet:
    """A ShardSet for a pattern, a shard file or a URL (see the module docstring)."""
    if is_folder_url(text):
        return _open_folder_url(text)
    refs, names = resolve(text)
    urls = _expand(text)
    found = _neighbour_manifest(urls, [_kind(u) for u in urls])
    manifest, unlisted = _select(found[0], urls) if found else (None, None)
    if manifest is not None:
        entries = Manifest(manifest).shard_entries
        local = [(r, s.sha256, n) for r, s, n in zip(refs, entries, names) if not isinstance(r, RemoteShard)]
        verify.register([r for r, _, _ in local], [c for _, c, _ in local], [n for _, _, n in local])
        refs = [r if not isinstance(r, RemoteShard) else RemoteShard(r.url, s.sha256, s.bytes, found[1])
                for r, s in zip(refs, entries)]
        return ShardSet(root=text, shard_paths=refs, manifest=manifest, manifest_sha256=hashlib.sha256(found[2]).hexdigest(),
                        origin=found[1])
    _refuse_unlisted_remote(text, refs, found[1] if found else None, unlisted)
    if unlisted:
        log.warn(f"{found[1]} does not list {unlisted}; reading the shards' metadata by scanning them instead.")
    from mpltools.data.wdscan import scan_shards

    log.info(f"{text}: no manifest.json beside the shards; scanning them for counts, classes and input shape"
             + (" (each `pipe:` shard is read once for this, one at a time)" if any(isinstance(r, RemoteShard) for r in refs) else ""))
    scan = scan_shards(refs, names, adopt=False)
    manifest = scanned_manifest(text, names, scan.counts, labeled=scan.labeled, classes=scan.classes,
                                class_counts=scan.class_counts, input_spec=scan.input_spec.to_json())
    return ShardSet(root=text, shard_paths=refs, manifest=manifest, manifest_sha256=None, origin=NO_CHECKSUMS)


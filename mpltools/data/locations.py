"""Shard sets named the WebDataset way (issue 10): brace patterns, `file://`, `http(s)://` and `pipe:` URLs.

`open_shard_set` hands every location that is not a folder to `open_location`. A location is kept as a
string until it is known to be local (`Path` would turn `https://h/x` into `https:/h/x`).

- Local shards (`d/shard-{000000..000009}.tar`, `file:///abs/d/shard-000000.tar`) are read in place.
- Remote shards (`http://`, `https://`) and `pipe:CMD` output are streamed once, with urllib or the shell,
  into a private temporary folder that is removed when the process exits; every reader then works on
  local files. `pipe:` runs a shell command, so it is accepted only when the user typed that location on
  the command line together with `--allow-pipe` (never from a recipe, a manifest or any other file).
- The metadata a reader needs (classes, input spec, counts) comes from a `manifest.json` beside the
  shards (same folder, same URL prefix) when there is one that lists them, with its sha256 checksums;
  otherwise from one scan of the shards (data/wdscan.py), and then there are no checksums to verify.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import posixpath
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mpltools import log
from mpltools.data import pipes, verify
from mpltools.data.format import MANIFEST, build_manifest, check_manifest, shard_names, sub_manifest
from mpltools.data.shards import ShardSet
from mpltools.data.tarindex import ShardError
from mpltools.errors import UsageError

REMOTE = ("http://", "https://")
NO_CHECKSUMS = "a scan of the shards (no manifest.json beside them, so no checksums)"
_cache: list[Path] = []
_fetched = itertools.count()  # every fetched shard gets its own file name in the cache


def looks_like_shards(text: str) -> bool:
    """True for what `open_location` handles: a pattern, a .tar file or a URL (a folder is not)."""
    return "{" in text or text.endswith(".tar") or "://" in text or text.startswith("pipe:")


def _expand(text: str) -> list[str]:
    import braceexpand

    try:
        return list(braceexpand.braceexpand(text))
    except Exception as exc:  # noqa: BLE001 - braceexpand raises plain errors on unbalanced braces
        raise UsageError(f"{text}: not a valid brace pattern ({exc}); write e.g. data/x/shard-{{000000..000009}}.tar.") from None


def _kind(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    if url.startswith(REMOTE):
        return "remote"
    if url.startswith("file://"):
        return "file"
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise UsageError(f"{url}: the {scheme}:// scheme is not supported; use a local path, file://, http(s)://, or "
                         f"`pipe:CMD` with --allow-pipe (e.g. pipe:aws s3 cp {url} -).")
    return "local"


def _local_path(url: str) -> Path:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)) if url.startswith("file://") else Path(url)


def _cache_dir() -> Path:
    if not _cache:
        _cache.append(Path(tempfile.mkdtemp(prefix="mpl-shards-")))
        atexit.register(shutil.rmtree, _cache[0], True)
    return _cache[0]


def _fetch(url: str) -> Path:
    """Stream a remote shard or a pipe's output into the private cache; errors name the URL."""
    dest = _cache_dir() / f"{next(_fetched):06d}.tar"
    tmp = dest.with_suffix(".part")
    if url.startswith("pipe:"):
        with open(tmp, "wb") as fh:
            done = subprocess.run(url[len("pipe:"):], shell=True, stdout=fh, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no message)"]
            raise ShardError(f"{url}: the command exited with status {done.returncode} ({tail[0]}); check the command.")
    else:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh, 1 << 20)
        except urllib.error.HTTPError as exc:
            raise ShardError(f"{url}: download failed (HTTP {exc.code} {exc.reason}); check the URL.") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ShardError(f"{url}: download failed ({getattr(exc, 'reason', exc)}); check the URL and the network.") from None
    tmp.rename(dest)
    return dest


def _neighbour_manifest(urls: list[str], kinds: list[str]) -> tuple[dict, str, bytes] | None:
    """The manifest.json in the same folder / under the same URL prefix as all the shards, if there is one."""
    if "pipe" in kinds:
        return None
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
        try:
            with urllib.request.urlopen(where, timeout=60) as response:
                raw = response.read()
        except (urllib.error.URLError, OSError):
            return None  # no manifest there (404) or unreachable: scan instead
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{where} is not valid JSON ({exc}); fix or remove it, or re-create the shard set.") from None
    check_manifest(manifest, where)
    return manifest, where, raw


def _select(manifest: dict, where: str, urls: list[str]) -> dict | None:
    """The manifest restricted to the shards the pattern names; None if it does not list them all."""
    names = [posixpath.basename(urllib.parse.urlparse(u).path) if "://" in u else Path(u).name for u in urls]
    missing = [n for n in names if n not in shard_names(manifest)]
    if missing:
        log.warn(f"{where} does not list {missing[0]}; reading the shards' metadata by scanning them instead.")
        return None
    return sub_manifest(manifest, names)


def resolve(text: str) -> tuple[list[Path], list[str]]:
    """The local files of a pattern or URL (remote ones streamed into the cache) and the names messages use."""
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
    paths = [_local_path(u) if k in ("local", "file") else _fetch(u) for u, k in zip(urls, kinds)]
    names = [str(_local_path(u)) if k in ("local", "file") else u for u, k in zip(urls, kinds)]
    return paths, names


def open_location(text: str) -> ShardSet:
    """A ShardSet for a pattern, a shard file or a URL (see the module docstring)."""
    paths, names = resolve(text)
    urls = _expand(text)
    found = _neighbour_manifest(urls, [_kind(u) for u in urls])
    manifest = _select(found[0], found[1], urls) if found else None
    if manifest is not None:
        verify.register(paths, [s["sha256"] for s in manifest["shards"]], names)
        return ShardSet(root=text, shard_paths=paths, manifest=manifest, manifest_sha256=hashlib.sha256(found[2]).hexdigest(),
                        origin=found[1])
    from mpltools.data.wdscan import scan_shards

    log.info(f"{text}: no manifest.json beside the shards; scanning them for counts, classes and input shape")
    scan = scan_shards(paths, names, adopt=False)
    manifest = build_manifest(num_samples=sum(scan.counts), labeled=scan.labeled, classes=scan.classes,
                              class_counts=scan.class_counts, input_spec=scan.input_spec.to_json(), extras=[],
                              shards=[{"name": n, "count": c, "sha256": None} for n, c in zip(names, scan.counts)],
                              provenance={"source": text, "scanned": True}, classes_unknown=not scan.labeled)
    return ShardSet(root=text, shard_paths=paths, manifest=manifest, manifest_sha256=None, origin=NO_CHECKSUMS)

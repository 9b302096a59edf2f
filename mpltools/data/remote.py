"""Remote shards fetched one at a time, checked before any of their samples is read, then deleted.

A remote shard set (`http(s)://`, `pipe:`, or an fsspec URL such as `s3://`) is opened without
downloading anything: `data/locations.py` gives it a list of `RemoteShard`s (a URL and, when a
manifest.json lists the shard, its sha256 and size). A reader that needs a shard enters
`fetched(ref)` (data/fetching.py), which

1. streams the shard, sequentially and without range requests, into a file of its own in the
   process's private folder (`$TMPDIR/mpl-shards-*`, made by the main process when the set is opened,
   removed when it exits, after its loader workers have stopped, also on SIGTERM: `mpltools.signals`), hashing
   every byte as it arrives;
2. compares the size and the sha256 with the manifest, so a bad shard is refused before the reader
   sees a single sample of it (the error names the URL);
3. hands the verified local copy to the reader, and deletes it when the reader leaves the block.

`fetching.ahead` lets a sequential reader download the next shard while it reads the current one, so
a reader holds at most 1 + depth shards on disk, whatever the size of the set. Transient faults
(connection reset or refused, timeout, a cut-off transfer, HTTP 5xx/408/429) are retried with
exponential backoff (`MPL_FETCH_RETRIES` attempts, default 5; `MPL_FETCH_BACKOFF` seconds before the
first retry, default 1, doubling); then the command stops with exit 1 naming the URL. A 404, a wrong
checksum or a wrong size is not retried.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import multiprocessing
import multiprocessing.util
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from mpltools import log, signals
from mpltools.data.tarindex import ShardError
from mpltools.errors import UsageError

NATIVE = ("http://", "https://")
EXTRA = "meta-pseudo-labels[remote]"
BACKENDS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub", "az": "adlfs", "abfs": "adlfs"}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteShard:
    """A shard that is read through `fetched`; it prints as its URL, so messages name the URL."""

    url: str
    sha256: str | None = None
    size: int | None = None
    origin: str | None = None  # the manifest the checksum comes from, for messages

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


class _Transient(Exception):
    """A fault worth another attempt; its message says what happened."""


class _Stopped(Exception):
    """A download ahead that was given up (its reader stopped)."""


# --- the private folder, the counters and SIGTERM -----------------------------------------------------

_state: dict = {}  # the private folder and the counters (shared with DataLoader workers)
_names = itertools.count()


def prepare() -> None:
    """Make the private folder and the shared counters; called in the main process when a remote set is opened.
    DataLoader workers use the same folder (`worker_init`), which the main process removes when it exits."""
    if "folder" in _state:
        return
    folder = Path(tempfile.mkdtemp(prefix="mpl-shards-"))
    # Removed at exit only once the DataLoader workers (daemon processes) are stopped: multiprocessing's exit
    # function terminates and joins them, then runs this finalizer. An `atexit` handler ran first whenever
    # multiprocessing was set up before this (torch does that): a worker still downloading ahead wrote a new shard
    # into the folder while it was being removed, and the folder, with that shard, stayed in $TMPDIR.
    multiprocessing.util.Finalize(None, shutil.rmtree, args=(folder, True), exitpriority=-100)
    signals.install()  # SIGTERM would end the process without `finally` blocks or atexit: make it Ctrl-C
    _state["folder"] = folder
    _state["counters"] = multiprocessing.Array("d", 3)  # shards, bytes, seconds spent fetching
    _state["start"] = time.perf_counter()


def handover() -> tuple[Path, object] | None:
    """The private folder and the shared counters, for DataLoader workers (data/fetching.py `worker_init`); None
    when no remote set is open."""
    return (_state["folder"], _state["counters"]) if "folder" in _state else None


def adopt(folder: Path, shared) -> None:
    """Use the main process's folder and counters (in a worker, which may have inherited nothing)."""
    _state.update(folder=folder, counters=shared)
    _state.setdefault("start", time.perf_counter())


def _folder() -> Path:
    if "folder" not in _state:
        prepare()
    return _state["folder"]


def counters() -> tuple[int, int, float]:
    """Shards and bytes fetched so far by this process and its workers, and the seconds spent on them."""
    if "counters" not in _state:
        return 0, 0, 0.0
    shards, size, seconds = _state["counters"][:]
    return int(shards), int(size), seconds


def window_metrics() -> dict[str, float]:
    """`data/*` metrics since the last call (for metrics.jsonl and the progress line): MB/s fetched by this
    process and its workers over the wall time in between, and shards fetched in all; {} without remote sets."""
    if "counters" not in _state:
        return {}
    shards, size, _ = counters()
    now = time.perf_counter()
    last_size, last_time = _state.get("window", (0, _state.get("start", now)))
    _state["window"] = (size, now)
    return {"data/fetch_MB_per_s": (size - last_size) / 1e6 / max(now - last_time, 1e-9), "data/shards_fetched": shards}


def _count(size: int, seconds: float) -> None:
    array = _state.get("counters")
    if array is None:
        return
    with array.get_lock():
        array[0] += 1
        array[1] += size
        array[2] += seconds


# --- settings --------------------------------------------------------------------------------------------


def _setting(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a number.") from None
    if value < 0:
        raise UsageError(f"{name}={text!r} must be >= 0.")
    return value


def attempts() -> int:
    return max(1, int(_setting("MPL_FETCH_RETRIES", 5)))


# --- one attempt -------------------------------------------------------------------------------------------


def check_scheme(url: str) -> None:
    """Refuse (exit 2) a URL whose scheme needs an fsspec backend that is not installed, naming the extra."""
    if "://" not in url or url.startswith((*NATIVE, "file://")):
        return
    scheme = url.split("://", 1)[0]
    backend = BACKENDS.get(scheme)
    hint = f"pip install '{EXTRA}'" + (f" (or just {backend})" if backend else "")
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"{url}: reading {scheme}:// locations needs fsspec: {hint}.") from None
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError:
        raise UsageError(f"{url}: reading {scheme}:// locations needs the {backend or scheme} backend of fsspec: {hint}.") from None
    except ValueError:
        raise UsageError(f"{url}: the {scheme}:// scheme is not supported; use a local path, file://, http(s)://, an fsspec "
                         f"URL (s3://, gs://, hf://, with {EXTRA}), or `pipe:CMD` with --allow-pipe.") from None


@contextmanager
def _source(url: str, timeout: float) -> Iterator[tuple[BinaryIO, int | None]]:
    """The byte stream of `url` and its announced length; raises _Transient or ShardError."""
    if url.startswith(NATIVE):
        request = urllib.request.Request(url, headers={"User-Agent": "mpltools"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in (408, 429):
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
            raise ShardError(f"{url}: download failed (HTTP {exc.code} {exc.reason}); check the URL.") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _Transient(str(getattr(exc, "reason", exc))) from None
        with response:
            length = response.headers.get("Content-Length")
            yield response, int(length) if length and length.isdigit() else None
        return
    import fsspec

    try:
        with fsspec.open(url, "rb") as fh:
            yield fh, None
    except (FileNotFoundError, PermissionError) as exc:
        raise ShardError(f"{url}: cannot be read ({type(exc).__name__}: {exc}); check the URL and the credentials.") from None


def _download(ref: RemoteShard, dest: Path, stop: threading.Event | None = None) -> int:
    """One attempt: stream `ref` into `dest`, hashing; check length, size and sha256. Returns the size. A set `stop`
    ends it between two blocks (a download ahead that no reader will claim)."""
    digest, size = hashlib.sha256(), 0
    timeout = _setting("MPL_FETCH_TIMEOUT", 60)
    with open(dest, "wb") as out:
        if ref.url.startswith("pipe:"):
            return _run_pipe(ref, out, dest)
        try:
            with _source(ref.url, timeout) as (stream, length):
                while block := stream.read(_CHUNK):
                    if stop is not None and stop.is_set():
                        raise _Stopped
                    digest.update(block)
                    out.write(block)
                    size += len(block)
        except (OSError, http.client.HTTPException, TimeoutError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
    if length is not None and size != length:
        raise _Transient(f"the transfer ended after {size:,} of {length:,} bytes")
    if ref.size is not None and size < ref.size:
        raise _Transient(f"the transfer ended after {size:,} of the {ref.size:,} bytes the manifest lists")
    _check(ref, digest.hexdigest(), size)
    return size


def _run_pipe(ref: RemoteShard, out: BinaryIO, dest: Path) -> int:
    done = subprocess.run(
        ref.url[len("pipe:") :],
        shell=True,
        stdout=out,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=signals.child_defaults if signals.in_worker() else None,
    )
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no message)"]
        raise ShardError(f"{ref.url}: the command exited with status {done.returncode} ({tail[0]}); check the command.")
    out.flush()
    size = dest.stat().st_size
    if ref.sha256:
        digest = hashlib.sha256()
        with open(dest, "rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
        _check(ref, digest.hexdigest(), size)
    return size


def _check(ref: RemoteShard, got: str, size: int) -> None:
    where = ref.origin or "the manifest"
    if ref.size is not None and size != ref.size:
        raise ShardError(f"{ref.url}: {size:,} bytes but {where} lists {ref.size:,}; the shard changed or is corrupt: "
                         "re-create or re-upload it.")
    if ref.sha256 and got != ref.sha256:
        raise ShardError(f"{ref.url}: sha256 {got[:12]}… does not match {ref.sha256[:12]}… in {where}; the shard changed "
                         "or is corrupt: re-create or re-upload it.")


# --- retries ------------------------------------------------------------------------------------------------


def fetch(ref: RemoteShard, stop: threading.Event | None = None) -> Path:
    """A verified local copy of `ref` in the private folder (the caller deletes it); retries transient faults."""
    dest = _folder() / f"{os.getpid()}-{next(_names):06d}.tar"
    backoff, tries = _setting("MPL_FETCH_BACKOFF", 1.0), attempts()
    start = time.perf_counter()
    try:
        for attempt in range(1, tries + 1):
            try:
                size = _download(ref, dest, stop)
                _count(size, time.perf_counter() - start)
                return dest
            except _Transient as exc:
                if attempt == tries:
                    raise ShardError(f"{ref.url}: download failed after {tries} attempt(s) ({exc}); check the URL and the "
                                     "network, then re-run the same command: a training run resumes from its last saved "
                                     "state.") from None
                wait = min(backoff * 2 ** (attempt - 1), 60.0)
                log.warn(f"{ref.url}: {exc}; retrying in {wait:.3g} s (attempt {attempt + 1} of {tries}).")
                if stop is not None and stop.wait(wait):
                    raise _Stopped from None
                if stop is None:
                    time.sleep(wait)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    raise AssertionError("unreachable")


def read_bytes(url: str, missing_ok: bool = False) -> bytes | None:
    """The whole (small) file at `url`, with the same retries; None for a missing file when `missing_ok`."""
    ref = RemoteShard(url)
    try:
        path = fetch(ref)
    except ShardError as exc:
        if missing_ok and ("HTTP 404" in exc.message or "FileNotFoundError" in exc.message):
            return None
        raise
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


# --- sizes ---------------------------------------------------------------------------------------------------


def shard_size(ref) -> int:
    """Bytes of a shard: the file's size, or for a remote shard the manifest's figure (0 when it has none)."""
    if isinstance(ref, RemoteShard):
        return ref.size or 0
    return Path(ref).stat().st_size

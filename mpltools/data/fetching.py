"""Reading remote shards: a verified local copy for the length of a block, the next shard downloading meanwhile.

`fetched(ref)` hands a reader the local file of shard `ref`: a local path as it is; for a `RemoteShard`
(data/remote.py) a copy fetched and checked against the manifest before the reader sees a byte of it,
deleted when the block ends. A block nested in another for the same shard, in the same process or in a
DataLoader worker started inside it, gets the same copy without a download (`reduced predict` holds a
shard while its workers and its writer read it).

`ahead(refs, order)` gives a sequential reader the indices of `order` while, in a thread, the next
`depth` remote shards download, so a reader holds at most 1 + depth shards on disk. A reader that stops
(on an error, or early) gives up the downloads it started ahead: they stop between two blocks and their
files are removed.

`worker_init()` is the DataLoader `worker_init_fn` that hands the main process's private folder, counters
and held copies to the workers, so they share them under every multiprocessing start method (a spawned
or forkserver worker inherits nothing).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mpltools.data import remote
from mpltools.data.remote import RemoteShard
from mpltools.data.tarindex import ShardError

_local: dict = {}  # copies held by `fetched` blocks (inherited by forked workers), this process's downloads ahead


@contextmanager
def fetched(ref) -> Iterator[Path]:
    """The local file to read for shard `ref`: a local path as it is, a remote shard as a verified copy that is
    deleted when the block ends. A ShardError naming the copy is re-raised naming the URL. Inside the block
    (also in DataLoader workers started inside it) `fetched(ref)` hands out the same copy without a download."""
    if not isinstance(ref, RemoteShard):
        yield ref
        return
    held = _local.setdefault("held", {})
    if ref.url in held:
        yield held[ref.url]
        return
    pending = _ahead().pop(ref.url, None)
    try:
        local = pending.future.result() if pending is not None else remote.fetch(ref)
    except BaseException:
        _drop_all()  # the reader stops here: what it started downloading ahead is not read
        raise
    held[ref.url] = local
    try:
        yield local
    except ShardError as exc:
        _drop_all()
        if str(local) not in exc.message:
            raise
        raise ShardError(exc.message.replace(str(local), ref.url), exc.exit_code) from None
    except BaseException:
        _drop_all()
        raise
    finally:
        held.pop(ref.url, None)
        local.unlink(missing_ok=True)


@dataclass
class _Pending:
    future: Future
    stop: threading.Event


def _ahead() -> dict[str, _Pending]:
    """This process's downloads started ahead of their reader, by URL (a forked worker starts with none)."""
    if _local.get("ahead_pid") != os.getpid():
        _local["ahead_pid"], _local["ahead"] = os.getpid(), {}
    return _local["ahead"]


def _start(ref: RemoteShard) -> None:
    pending = _ahead()
    if ref.url in pending:
        return
    job = _Pending(Future(), threading.Event())

    def run() -> None:
        try:
            job.future.set_result(remote.fetch(ref, job.stop))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            job.future.set_exception(exc)

    pending[ref.url] = job
    threading.Thread(target=run, name="mpl-fetch-ahead", daemon=True).start()


def _drop(url: str, wait: float = 0) -> None:
    """Give up a download started ahead that no reader claimed: it stops, and its file is removed (waiting for that
    up to `wait` seconds; later, the thread removes it)."""
    job = _ahead().pop(url, None)
    if job is None:
        return
    job.stop.set()
    job.future.add_done_callback(_remove_result)
    concurrent.futures.wait([job.future], timeout=wait)


def _drop_all() -> None:
    """The reader stopped on an error: give up every download started ahead, before the error is reported."""
    for url in list(_ahead()):
        _drop(url, wait=5)


def _remove_result(future: Future) -> None:
    if future.exception() is None:
        future.result().unlink(missing_ok=True)


def ahead(refs: list, order, depth: int = 1) -> Iterator[int]:
    """The indices of `order`, in order; while the caller reads `refs[i]` (through `fetched`), the next `depth`
    remote shards of the order are downloaded in the background. Local shards pass through untouched."""
    order = [int(i) for i in order]
    if not any(isinstance(refs[i], RemoteShard) for i in order[:1]):
        yield from order
        return
    try:
        for k, i in enumerate(order):
            for j in order[k + 1: k + 1 + depth]:
                _start(refs[j])
            yield i
    finally:
        for j in order:
            if isinstance(refs[j], RemoteShard):
                _drop(refs[j].url)


def worker_init():
    """A DataLoader `worker_init_fn` handing this process's private folder, counters and held copies to the workers;
    None when no remote set is open."""
    shared = remote.handover()
    if shared is None:
        return None
    return functools.partial(_adopt, *shared, dict(_local.get("held", {})))


def _adopt(folder: Path, counters, held: dict, worker_id: int) -> None:
    remote.adopt(folder, counters)
    _local["held"] = held

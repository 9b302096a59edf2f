"""Fixed-chunk evaluation batches, for commands that write per-sample results (`data filter-unlabeled`,
`reduced predict`) and must write the same bytes under 1 or N processes.

A chunk is samples [j*B, (j+1)*B) of shard i: its contents never depend on the number of processes
or workers, so batched inference (whose kernels may round differently for another batch
composition) gives every sample bitwise the same output however the work is split. Only who
computes a chunk changes:

* processes: when at least as many shards are iterated as there are processes, process r takes
  every world-th shard (the others are not even read); otherwise every process reads every shard
  and takes the chunks with (i + j) % world == r;
* DataLoader workers (`workers > 0`) split a process's shards the same way (or its chunks, when it
  has fewer shards than workers), so decoding runs in parallel with inference.

Chunks arrive in no particular order; `positions` says where their samples are.

`shard_samples` reads a shard through its header index (`index_shard`) and reads only the samples
asked for, about 10x faster than `tarfile`; shards that are not plain ustar fall back to `read_shard`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from mpltools.data import transforms
from mpltools.data import fetching, verify
from mpltools.data.codecs import Sample, decode_input
from mpltools.data.format import INPUT_EXTENSIONS
from mpltools.data.shards import ShardError, ShardSet, index_shard, read_shard
from mpltools.data.tarindex import BLOCK
from mpltools.data.worker_errors import Carrying, unwrap
from mpltools.data.worker_sockets import socket_dir


@dataclass
class EvalChunk:
    shard: int  # index of the shard in the set
    positions: np.ndarray  # int64 positions in that shard of the samples in x
    keys: list[str]
    x: torch.Tensor | None  # eval views (uint8 NHWC or float vectors); None when `inspect` rejected every sample
    labels: list[int | None]
    rejected: list = field(default_factory=list)  # what `inspect` returned for the samples it rejected


Inspect = Callable[[Sample, np.ndarray], object]


class _Chunks(torch.utils.data.IterableDataset):
    def __init__(self, shards: ShardSet, aug, batch_size: int, rank: int, world: int, indices: list[int], inspect):
        self.shards, self.aug, self.batch_size, self.inspect = shards, aug, batch_size, inspect
        self.spec = shards.input_spec  # every decoded sample is checked against it
        self.by_shard = len(indices) >= world
        self.mine = [i for k, i in enumerate(indices) if k % world == rank] if self.by_shard else list(indices)
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[EvalChunk]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        whole_shards = len(self.mine) >= workers
        counter = 0  # owned chunks seen, for the worker split by chunk
        read = [i for k, i in enumerate(self.mine) if not whole_shards or k % workers == worker]
        for i in fetching.ahead(self.shards.shard_paths, read):  # the next remote shard downloads meanwhile
            path = self.shards.shard_paths[i]
            current, take, rows = -1, False, None

            def wanted(position: int) -> bool:
                nonlocal current, take, counter
                j = position // self.batch_size
                if j != current:
                    current = j
                    owned = self.by_shard or (i + j) % self.world == self.rank
                    take = owned and (whole_shards or counter % workers == worker)
                    counter += owned
                return take

            for position, sample in shard_samples(path, self.shards.num_classes, wanted):
                if rows is not None and position // self.batch_size != rows[5]:
                    yield _finish(i, rows)
                    rows = None
                if rows is None:
                    rows = ([], [], [], [], [], position // self.batch_size)  # positions, keys, views, labels, rejected, chunk
                decoded = decode_input(sample, path, self.spec)
                verdict = self.inspect(sample, decoded) if self.inspect is not None else None
                if verdict is not None:
                    rows[4].append(verdict)
                    continue
                rows[0].append(position)
                rows[1].append(sample.key)
                rows[2].append(transforms.eval_view(decoded, self.aug))
                rows[3].append(sample.label)
            if rows is not None:
                yield _finish(i, rows)


def _finish(shard: int, rows) -> EvalChunk:
    positions, keys, views, labels, rejected, _ = rows
    x = torch.from_numpy(np.stack(views)) if views else None
    return EvalChunk(shard, np.asarray(positions, np.int64), keys, x, labels, rejected)


def shard_samples(path, num_classes: int | None, wanted=None):
    """(position, Sample) for the samples of one shard for which `wanted(position)` is true (all if None),
    in order, checked like `read_shard` (the header index checks the whole shard first). A remote shard is
    read from its local copy, fetched and checked against the manifest first (data/fetching.py)."""
    with fetching.fetched(path) as local:
        yield from _local_samples(local, num_classes, wanted)


def _local_samples(path, num_classes: int | None, wanted):
    index = index_shard(path, num_classes)
    if index is None:  # pax/GNU headers etc.: tarfile reads everything
        for position, sample in enumerate(read_shard(path, num_classes)):
            if wanted is None or wanted(position):
                yield position, sample
        return
    with verify.open_checked(path) as fh:
        for position, (start, end) in enumerate(index.bounds[:, :2].tolist()):
            if wanted is not None and not wanted(position):
                continue
            fh.seek(start)
            raw = fh.read(end - start)
            if len(raw) != end - start:
                raise ShardError(f"{path} changed while it was read (sample {index.keys[position]!r}); read it again.")
            label = int(index.labels[position])
            yield position, _sample(raw, index.keys[position], None if label < 0 else label)
        fh.finish()  # the shard's sha256 against the manifest (when every sample was read in order)


def _sample(raw: bytes, key: str, label: int | None) -> Sample:
    """A sample from its consecutive plain ustar members (already validated by `index_shard`)."""
    sample = Sample(key=key, ext="", data=b"", label=label)
    offset = 0
    while offset < len(raw):
        header = raw[offset: offset + BLOCK]
        name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        payload = raw[offset + BLOCK: offset + BLOCK + size]
        ext = name.partition(".")[2]
        if ext in INPUT_EXTENSIONS:
            sample.ext, sample.data = ext, payload
        elif ext != "cls":
            sample.extras[ext] = payload
        offset += BLOCK + size + (-size % BLOCK)
    return sample


def _as_is(item):
    return item


def eval_chunks(shards: ShardSet, aug: transforms.AugmentSpec, batch_size: int, rank: int = 0, world: int = 1,
                shard_indices: list[int] | None = None, inspect: Inspect | None = None, workers: int = 0) -> Iterator[EvalChunk]:
    """This process's chunks of `shard_indices` (default: all shards); see the module docstring.

    `inspect(sample, decoded)`, if given, sees each decoded sample of this process first: a return
    value other than None rejects the sample (it is left out of `x`) and is kept in `rejected`.
    With workers it runs in the worker processes, so it must not rely on side effects.
    """
    indices = list(range(len(shards.shard_paths))) if shard_indices is None else list(shard_indices)
    dataset = _Chunks(shards, aug, batch_size, rank, world, indices, inspect)
    if workers <= 0:
        yield from _ahead(iter(dataset))
        return
    socket_dir()
    for item in torch.utils.data.DataLoader(Carrying(dataset), batch_size=None, num_workers=workers, collate_fn=_as_is,
                                            persistent_workers=False, worker_init_fn=fetching.worker_init()):
        yield unwrap(item)  # a worker's MplError is raised here with its own message


_DONE = object()


def _ahead(chunks: Iterator[EvalChunk], depth: int = 2) -> Iterator[EvalChunk]:
    """The chunks, produced by a thread up to `depth` ahead of the consumer: reading and decoding (Pillow
    and hashlib release the GIL in their C parts) overlap the model, which releases it in every op.
    The same chunks in the same order as `chunks` itself; an error in the thread is raised here."""
    import queue
    import threading

    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        box.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            box.put(exc)

    thread = threading.Thread(target=produce, name="mpl-eval-chunks", daemon=True)
    thread.start()
    try:
        while (item := box.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)

"""Loader sizing for training: how the `data.workers` of a process are split between the labelled
and unlabelled streams, how many decoded batches they may queue, and what the loaders will hold in
memory. `mpl train` prints the estimate at start and refuses to start (naming the recipe key to
change) when the processes on this machine would need more memory than it has.

* Workers are split in proportion to the streams' work: an unlabelled sample (decode, weak and
  strong view) costs `UNLABELED_COST` times a labelled one (decode, weak view), so with mu = 7
  the labelled stream is ~5% of the work and gets one worker of eight, not a copy of all eight.
  With a single worker the labelled stream runs in the training process itself.
* Each worker queues 1..4 batches (DataLoader `prefetch_factor`), as many as `data.prefetch_mb`
  allows for all of this process's workers together. A batch is delivered whole, so one queued
  batch per worker is the floor: when even that exceeds the budget the estimate says so.
* The estimate, per training process: queued batches, the batch each worker (or the training
  process) is assembling (its views, then their stacked copy: twice the batch), the shuffle
  buffers of encoded samples (streamed sets), a worker's own memory (`WORKER_OVERHEAD`), and, in
  memory mode, the decoded sets. Shared pages (the interpreter and libraries a forked worker shares
  with its parent) are not counted: adding up the workers' RSS counts them once per worker.

Pure arithmetic on sizes from the recipe and the manifests; nothing here imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

UNLABELED_COST = 2.5  # measured: 2.2x for 32-px PNGs (CIFAR views), 2.9x for 375x500 JPEGs cropped to 224 (benchmarks/README.md)
WORKER_OVERHEAD = 64 << 20  # a worker's private memory besides its batches and buffers (measured 14-55 MB at 32 px)
MAX_PREFETCH = 4  # DataLoader's default is 2; more gains nothing once a worker keeps up
_MB = 1 << 20


@dataclass(frozen=True)
class StreamPlan:
    name: str  # "labelled" | "unlabelled"
    workers: int
    prefetch: int  # batches queued per worker (0 without workers)
    batch_bytes: int  # one decoded local batch: every view, labels and extras
    shuffle_bytes: int  # one shuffle buffer of encoded samples (0 in memory mode)

    def parts(self) -> dict[str, int]:
        builders = max(self.workers, 1)  # without workers the training process assembles the batches
        return {"queued": self.workers * self.prefetch * self.batch_bytes,
                "assembling": builders * 2 * self.batch_bytes,
                "shuffle buffers": builders * self.shuffle_bytes,
                "worker processes": self.workers * WORKER_OVERHEAD}


@dataclass(frozen=True)
class LoaderPlan:
    streams: tuple[StreamPlan, ...]
    decoded_sets: int  # in memory mode: the decoded labelled/unlabelled sets, in the training process
    prefetch_budget: int

    def stream(self, name: str) -> StreamPlan:
        return next(s for s in self.streams if s.name == name)

    @property
    def total(self) -> int:
        return self.decoded_sets + sum(sum(s.parts().values()) for s in self.streams)

    @property
    def over_prefetch_budget(self) -> bool:
        return sum(s.parts()["queued"] for s in self.streams) > self.prefetch_budget

    def describe(self) -> str:
        lines = [f"{s.name}: {s.workers} worker(s), {s.prefetch} queued batch(es) each, {_fmt(s.batch_bytes)} per batch"
                 for s in self.streams]
        parts: dict[str, int] = {"decoded sets": self.decoded_sets} if self.decoded_sets else {}
        for s in self.streams:
            for key, value in s.parts().items():
                parts[key] = parts.get(key, 0) + value
        detail = ", ".join(f"{key} {_fmt(value)}" for key, value in parts.items() if value)
        return f"loaders: {'; '.join(lines)}; estimated loader memory per process {_fmt(self.total)} ({detail})"


def split_workers(total: int, unlabeled_ratio: int, two_streams: bool) -> tuple[int, int]:
    """(labelled, unlabelled) workers out of `total`, in proportion to the streams' work."""
    if not two_streams:
        return total, 0
    if total <= 1:
        return 0, total
    share = 1.0 / (1.0 + UNLABELED_COST * unlabeled_ratio)
    labelled = min(total - 1, max(1, round(total * share)))
    return labelled, total - labelled


def prefetch_factor(budget: int, workers_and_batch: list[tuple[int, int]]) -> int:
    """Batches each worker may queue so that all of them together stay within `budget` bytes (1..4)."""
    queued_per_round = sum(w * b for w, b in workers_and_batch)
    if queued_per_round <= 0:
        return MAX_PREFETCH
    return max(1, min(MAX_PREFETCH, budget // queued_per_round))


def plan(*, labeled_batch: int, unlabeled_batch: int, two_streams: bool, workers: int, unlabeled_ratio: int,
         view_bytes: int, extra_bytes: int, in_memory: bool, augmented: bool, shuffle_buffer: int,
         encoded_bytes: tuple[int, int], decoded_bytes: int, prefetch_mb: int) -> LoaderPlan:
    """The loaders of one training process. Batches are local (per process); `view_bytes` is one decoded
    view (C x size x size uint8, or a float vector), `extra_bytes` the per-sample extras (stored logits),
    `encoded_bytes` the mean stored size of a (labelled, unlabelled) sample."""
    w_lab, w_unl = split_workers(workers, unlabeled_ratio, two_streams)
    if in_memory and not augmented:
        w_lab = w_unl = 0  # nothing to compute per sample: workers would only add overhead (loaders.make_stream)
    lab_bytes = labeled_batch * (view_bytes + 8 + extra_bytes)
    unl_bytes = unlabeled_batch * (2 * view_bytes + extra_bytes)
    sizes = [(w_lab, lab_bytes)] + ([(w_unl, unl_bytes)] if two_streams else [])
    prefetch = prefetch_factor(prefetch_mb * _MB, sizes)
    buffers = (0, 0) if in_memory else tuple(shuffle_buffer * e for e in encoded_bytes)
    streams = [StreamPlan("labelled", w_lab, prefetch if w_lab else 0, lab_bytes, buffers[0])]
    if two_streams:
        streams.append(StreamPlan("unlabelled", w_unl, prefetch if w_unl else 0, unl_bytes, buffers[1]))
    return LoaderPlan(tuple(streams), decoded_bytes if in_memory else 0, prefetch_mb * _MB)


def machine_memory() -> int | None:
    """Bytes of memory this machine (or its container's cgroup limit, if lower) has, or None if unknown.

    The total, not what is free right now: every process of a run must reach the same decision."""
    total = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            total = None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file, encoding="ascii").read().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
        break
    return total


def refusal(p: LoaderPlan, processes_here: int, available: int | None, workers_key: str = "data.workers") -> str | None:
    """Why the loaders cannot fit on this machine (a message naming the key to change), or None."""
    need = p.total * processes_here
    if available is None or need <= available:
        return None
    parts: dict[str, int] = {"decoded sets": p.decoded_sets}
    for s in p.streams:
        for key, value in s.parts().items():
            parts[key] = parts.get(key, 0) + value
    largest = max(parts, key=parts.get)
    advice = {
        "decoded sets": 'stream the sets instead: data.in_memory = "no"',
        "queued": f"lower data.prefetch_mb (now {p.prefetch_budget // _MB}; one queued batch per worker is the floor) or {workers_key}",
        "assembling": f"lower {workers_key} or data.batch_size (each worker assembles a whole batch)",
        "shuffle buffers": "lower data.shuffle_buffer",
        "worker processes": f"lower {workers_key}",
    }[largest]
    who = f" ({processes_here} processes on this machine: {_fmt(need)})" if processes_here > 1 else ""
    return (f"the data loaders would hold about {_fmt(p.total)} per process{who}, more than the {_fmt(available)} "
            f"of memory this machine has; most of it is {largest} ({_fmt(parts[largest])} per process): {advice}.")


def _fmt(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GB"
    return f"{n / _MB:.0f} MB" if n >= 10 * _MB else f"{n / _MB:.1f} MB" if n >= _MB // 10 else f"{n / 1024:.0f} KB"

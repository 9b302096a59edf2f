"""A project error raised in a DataLoader worker process reaches the main process with its message intact.

torch re-raises a worker's exception in the main process as `type(exc)(text)`, where `text` is
"Caught ShardError in DataLoader worker process 0.\\nOriginal Traceback (most recent call last): ...",
so the one-paragraph message the CLI prints would become a traceback. A dataset wrapped in
`Carrying` instead hands an MplError over as data (a `WorkerFailure`, plain and picklable) and stops;
the main process passes every item through `unwrap`, which raises the same error type with the same
message and exit code. Other exceptions (bugs) keep torch's behaviour, traceback included. A worker leaves
SIGINT and SIGTERM to the main process (`signals.ignore_in_worker`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from mpltools import signals
from mpltools.data.tarindex import ShardError
from mpltools.errors import MplError

_TYPES = {cls.__name__: cls for cls in (MplError, ShardError)}


@dataclass(frozen=True)
class WorkerFailure:
    kind: str  # the class name, "ShardError" or "MplError" (subclasses travel as the nearer of the two)
    message: str
    exit_code: int


class Carrying(torch.utils.data.IterableDataset):
    """`dataset`'s items; in a worker process, an MplError it raises becomes a final WorkerFailure item."""

    def __init__(self, dataset: torch.utils.data.IterableDataset):
        self.dataset = dataset

    def __iter__(self) -> Iterator:
        if torch.utils.data.get_worker_info() is not None:
            signals.ignore_in_worker()
        try:
            yield from self.dataset
        except MplError as exc:
            if torch.utils.data.get_worker_info() is None:
                raise
            kind = "ShardError" if isinstance(exc, ShardError) else "MplError"
            yield WorkerFailure(kind, exc.message, exc.exit_code)


def unwrap(item):
    """The item itself, or the worker's error raised again here (in the main process)."""
    if isinstance(item, WorkerFailure):
        raise _TYPES[item.kind](item.message, item.exit_code)
    return item

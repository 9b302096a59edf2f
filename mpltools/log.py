"""Human output: everything here goes to stderr so stdout carries results only (DESIGN §2)."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def info(message: str) -> None:
    if not _quiet:
        console.print(message, markup=False)


def warn(message: str) -> None:
    console.print(f"warning: {message}", style="yellow", markup=False)


def error(message: str) -> None:
    console.print(f"error: {message}", style="bold red", markup=False, soft_wrap=True)


@contextmanager
def progress(description: str, total: int | None, unit: str = "items", enabled: bool = True) -> Iterator["_Bar"]:
    """A rich progress bar with rate and ETA on stderr.

    Without a terminal rich only renders at the end, so for long jobs in CI or on a cluster we also
    print a plain line every `_LOG_EVERY_S` seconds.
    """
    if _quiet or not enabled:
        yield _Bar(None, None, description, total, unit)
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[extra]}"),
    ]
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(description, total=total, rate="", extra="")
        yield _Bar(prog, task, description, total, unit)


class _Bar:
    _LOG_EVERY_S = 30.0

    def __init__(self, prog, task, description, total, unit):
        self._prog, self._task = prog, task
        self.description, self.total, self.unit = description, total, unit
        self._start = time.perf_counter()
        self._last_log = self._start
        self.done = 0

    def advance(self, n: int = 1, extra: str = "", items: int | None = None) -> None:
        self.done += n
        if self._prog is None:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = (items if items is not None else self.done) / elapsed
        self._prog.update(self._task, advance=n, rate=f"{rate:,.0f} {self.unit}/s", extra=extra)
        now = time.perf_counter()
        if not console.is_terminal and now - self._last_log > self._LOG_EVERY_S:
            self._last_log = now
            console.print(f"{self.description}: {self.done}/{self.total or '?'} {extra}", markup=False)


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl; each line is flushed whole."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop lines logged after the state we resume from (they will be logged again)."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        step = record.get("step", -1) if isinstance(record, dict) else -1
        # the final record of `after_step` is written again when the run ends: keep one, not two
        if step < after_step or (step == after_step and not record.get("final")):
            kept.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    os.replace(tmp, path)

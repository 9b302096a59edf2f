"""Human output: everything here goes to stderr so stdout carries results only (DESIGN §2)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

console = Console(stderr=True, highlight=False)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def info(message: str) -> None:
    if not _quiet:
        console.print(message, markup=False, soft_wrap=True)  # a log file gets whole lines, not 80-column cuts


def warn(message: str) -> None:
    console.print(f"warning: {message}", style="yellow", markup=False, soft_wrap=True)


def error(message: str) -> None:
    console.print(f"error: {message}", style="bold red", markup=False, soft_wrap=True)


@contextmanager
def progress(description: str, total: int | None, unit: str = "items", enabled: bool = True, start: int = 0) -> Iterator[_Bar]:
    """Progress on stderr: a rich bar with rate, elapsed time and ETA on a terminal, plain lines otherwise.

    On a terminal the metrics go on their own line below the bar, so at 80 columns the bar, rate
    and ETA are never squeezed out; on a narrower one the rate goes first, then the rest (`_GIVES_WAY`),
    the count and the ETA last. Without a terminal (CI, a cluster's log file) rich's live display
    would render once, cut to 80 columns; we print a plain, unabbreviated line every `_LOG_EVERY_S`
    seconds and one at the end instead. `start` items are already done (a resumed run): they count
    towards the total but not towards the rate and ETA; when they are all of it, one line says there is
    nothing left to do (no rate or ETA, which would read "0.0 steps/s eta -:--:--").
    """
    if _quiet or not enabled:
        yield _Bar(None, None, description, total, unit, start=start)
        return
    if total and start >= total:
        console.print(f"{description}: {_count(start, total)} (100%), nothing left to do", markup=False, soft_wrap=True)
        yield _Bar(None, None, description, total, unit, start=start)
        return
    if not console.is_terminal:
        bar = _Bar(None, None, description, total, unit, plain=True, start=start)
        yield bar
        bar.finish()
        return
    with make_progress(console) as prog:
        task = prog.add_task(description, total=total, completed=start, rate="", extra="", count=_count(start, total))
        yield _Bar(prog, task, description, total, unit, start=start)


def _count(done: int, total: int | None) -> str:
    return f"{compact(done)}/{compact(total)}" if total else compact(done)


# The columns of the live bar in the order in which they give way on a terminal narrower than they need:
# what remains longest is the count (step/total) and the ETA.
_GIVES_WAY = ("rate", "elapsed", "percent", "bar", "description")
_BAR_MIN = 5  # the bar takes what the other columns leave, at least this much


class _MetricsBelow(Progress):
    """A rich Progress that shows each task's metrics (`extra`) on a line of its own under the bar, and only the
    columns that fit the terminal's width (dropped in `_GIVES_WAY` order)."""

    def __init__(self, named: dict, **kwargs):
        self.named = named
        super().__init__(*named.values(), **kwargs)

    def make_tasks_table(self, tasks):
        tasks = [t for t in tasks if t.visible]
        keep = list(self.named)
        if hasattr(self, "live"):  # rich renders once while it builds the display, before the console is known
            for dropped in range(len(_GIVES_WAY) + 1):
                keep = [name for name in self.named if name not in _GIVES_WAY[:dropped]]
                if self._width(keep, tasks) <= self.console.width:
                    break
        self.columns = tuple(self.named[name] for name in keep)
        return super().make_tasks_table(tasks)

    def _width(self, names: list[str], tasks) -> int:
        """Columns needed by `names` (one space between two), with the bar at its smallest."""
        console = self.console
        width = len(names) - 1
        for name in names:
            if name == "bar":
                width += _BAR_MIN
            elif tasks:
                width += max(Measurement.get(console, console.options, self.named[name](t)).maximum for t in tasks)
        return width

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            if task.fields.get("extra"):
                yield Text("  " + task.fields["extra"], overflow="fold")


def make_progress(target: Console) -> Progress:
    def fixed() -> Column:  # never shrunk or cut: on a short line a column is dropped whole (_GIVES_WAY)
        return Column(no_wrap=True)

    columns = {
        "description": TextColumn("[bold]{task.description}", table_column=fixed()),
        "bar": BarColumn(bar_width=None, table_column=Column(ratio=1)),
        "count": TextColumn("{task.fields[count]}", table_column=fixed()),
        "percent": TaskProgressColumn(table_column=fixed()),
        "rate": TextColumn("{task.fields[rate]}", table_column=fixed()),
        "elapsed": TimeElapsedColumn(table_column=fixed()),
        "eta": TextColumn("eta", table_column=fixed()),
        "remaining": TimeRemainingColumn(table_column=fixed()),
    }
    return _MetricsBelow(columns, console=target, transient=False)


def compact(n: float) -> str:
    """A count in at most 6 characters: 99999, 433.3k, 43.3M, 1.3G."""
    for limit, div, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e5, 1e3, "k")):
        if n >= limit:
            return f"{n / div:.1f}{suffix}"
    return f"{n:.0f}" if isinstance(n, int) or n >= 100 else f"{n:.3g}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Bar:
    _LOG_EVERY_S = 30.0

    def __init__(self, prog, task, description, total, unit, plain: bool = False, start: int = 0):
        self._prog, self._task, self._plain = prog, task, plain
        self.description, self.total, self.unit = description, total, unit
        self._start = time.perf_counter()
        self._last_log = self._start
        self.done = self._start_done = start
        self.extra = ""

    def advance(self, n: int = 1, extra: str = "", items: int | None = None) -> None:
        self.done += n
        self.extra = extra or self.extra
        if self._prog is None and not self._plain:
            return
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = (items if items is not None else self.done - self._start_done) / elapsed
        if self._prog is not None:
            self._prog.update(
                self._task, advance=n, rate=f"{compact(rate)} {self.unit}/s", extra=extra, count=_count(self.done, self.total)
            )
            return
        now = time.perf_counter()
        if now - self._last_log >= self._LOG_EVERY_S:
            self._last_log = now
            console.print(self.plain_line(rate, elapsed), markup=False, highlight=False, soft_wrap=True)

    def plain_line(self, rate: float, elapsed: float) -> str:
        """`train mpl: 120/300 (40%) 12 steps/s elapsed 0:00:10 eta 0:00:15 | loss 0.31 ...` (never abbreviated)."""
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else None
            where = f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)"
        else:
            left, where = None, f"{self.done}"
        line = f"{self.description}: {where} {rate:,.1f} {self.unit}/s elapsed {_clock(elapsed)} eta {_clock(left)}"
        return line + (f" | {self.extra}" if self.extra else "")

    def finish(self) -> None:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = (self.done - self._start_done) / elapsed
        console.print(self.plain_line(rate, elapsed), markup=False, highlight=False, soft_wrap=True)


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

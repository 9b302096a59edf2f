"""What the training loop logs (DESIGN §3, Metrics): per logging interval, the step's losses and diagnostics,
the throughput and the fraction of time spent waiting for data, the feedback signal's statistics and
pseudo-label collapse; written to `metrics.jsonl` and the trackers by the main process, which also
appends the run's start to `run.json`.
"""

from __future__ import annotations

import time
from pathlib import Path

from mpltools import log, tracking
from mpltools.config import Recipe
from mpltools.data import remote
from mpltools.methods.feedback_window import CollapseWatch, FeedbackWindow
from mpltools.run_folder import start_record, write_run_info

# The wall-clock keys of a metrics record: they differ between two runs of one recipe (remote shard sets' fetch
# counters too: they count this process's downloads). Every other key of a resumed run's metrics.jsonl equals the
# uninterrupted run's (the resume state keeps the loop's bookkeeping).
TIMING_KEYS = frozenset({"throughput/images_per_s", "data/wait_fraction", "data/fetch_MB_per_s", "data/shards_fetched"})


def images_per_step(recipe: Recipe) -> int:
    """Images one step reads: the labelled batch, and two views of the unlabelled batch unless supervised."""
    d = recipe.data
    return d.batch_size * (1 + (2 * d.unlabeled_ratio if recipe.method.name != "supervised" else 0))


class Interval:
    """One logging interval of the loop: its steps, the time they waited for data, the feedback signal h; `record`
    turns it into the line `metrics.jsonl` gets, `restart` opens the next interval."""

    def __init__(self, recipe: Recipe):
        self.images_per_step = images_per_step(recipe)
        self.h, self.collapse = FeedbackWindow(), CollapseWatch()
        self.restart()

    def restart(self) -> None:
        self.wait, self.start, self.steps = 0.0, time.perf_counter(), 0

    def state(self) -> dict:
        """What a resume state keeps of the interval, so the resumed run logs what the uninterrupted run would: the
        h values of the open window and whether the pseudo labels are collapsed (an episode warns once). Its
        timings are wall-clock (TIMING_KEYS) and start afresh."""
        return {"h_window": self.h.snapshot(), "collapsed": self.collapse.collapsed}

    def load(self, state: dict) -> None:
        self.h.restore(state["h_window"])
        self.collapse.collapsed = bool(state["collapsed"])

    def waited(self, seconds: float) -> None:
        self.wait += seconds

    def stepped(self, metrics: dict) -> None:
        if "feedback/h" in metrics:
            self.h.add(metrics["feedback/h"].detach())
        self.steps += 1

    def record(self, step: int, metrics: dict) -> dict:
        elapsed = time.perf_counter() - self.start
        return {
            "step": step,
            **{k: float(v) for k, v in metrics.items() if v.dim() == 0},
            "throughput/images_per_s": self.images_per_step * self.steps / max(elapsed, 1e-9),
            "data/wait_fraction": self.wait / max(elapsed, 1e-9),
            **remote.window_metrics(),  # remote shard sets: MB/s fetched, shards fetched
            **self.h.summary(),
        }

    def collapsed(self, metrics: dict, classes: list[str]) -> str | None:
        """A warning when the pseudo labels of this logging step collapse onto few classes (methods/feedback_window.py)."""
        if "hist/pseudo_labels" not in metrics:
            return None
        return self.collapse.check(metrics["hist/pseudo_labels"].tolist(), classes)


class RunLog:
    """The run's `metrics.jsonl` and trackers. On the main process it appends this start to `run.json` and drops the
    metrics a resumed run will log again; on the others it writes nothing. `begun` adds to the start's record (a warm
    start's provenance)."""

    def __init__(
        self, out: Path, recipe: Recipe, runtime, command: str, start_step: int, trackers: list[str], begun: dict | None = None
    ):
        self.metrics, self.tracker = None, None
        if runtime.is_main:
            write_run_info(out, {**start_record(command, start_step, runtime, recipe.runtime.seed), **(begun or {})})
            log.truncate_metrics(out / "metrics.jsonl", start_step)
            self.metrics = log.MetricsWriter(out / "metrics.jsonl")
            if start_step < recipe.schedule.steps:  # a finished run re-run has nothing new to track (no empty event file)
                self.tracker = tracking.start(trackers, out, recipe.to_dict())

    def write(self, record: dict) -> None:
        if self.metrics:
            self.metrics.write(record)
            if self.tracker:
                self.tracker.log(record, step=record["step"])

    def close(self, step: int, final: dict) -> None:
        """After the loop: the final validation's line (also to the trackers), then the file is closed (the trackers stay
        open)."""
        if self.metrics:
            if final:
                self.metrics.write({"step": step, "final": True, **final})
                if self.tracker:
                    self.tracker.log(final, step=step)
            self.metrics.close()

    def finish_trackers(self) -> None:
        if self.tracker:
            self.tracker.finish()

"""Statistics of the feedback coefficient h over a logging window, and the pseudo-label collapse check.

Pure helpers (no torch state): the trainer adds each step's h to a `FeedbackWindow` and, on logging
steps, reports `summary()` as `diag/h_mean`, `diag/h_abs_median`, `diag/h_pos_frac`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class FeedbackWindow:
    """The h values of the steps since the last log."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def add(self, h) -> None:
        """A float or a 0-d tensor (converted only at summary(), so a GPU step does not wait for it)."""
        self.values.append(h)

    def snapshot(self) -> list[float]:
        """The values of the open window as floats, for a resume state (`restore` puts them back)."""
        return [float(x) for x in self.values]

    def restore(self, values: list[float]) -> None:
        self.values = list(values)

    def summary(self) -> dict[str, float]:
        """Mean h, median |h| and the fraction of steps with h > 0; empty when no h was seen. Clears the window."""
        values = [v for v in (float(x) for x in self.values) if math.isfinite(v)]
        self.values = []
        if not values:
            return {}
        absolute = sorted(abs(v) for v in values)
        n, mid = len(absolute), len(absolute) // 2
        median = absolute[mid] if n % 2 else 0.5 * (absolute[mid - 1] + absolute[mid])
        return {"diag/h_mean": sum(values) / n, "diag/h_abs_median": median, "diag/h_pos_frac": sum(v > 0 for v in values) / n}


def collapse_warning(
    histogram: Sequence[float],
    classes: Sequence[str] | None = None,
    min_entropy: float = 0.5,
    max_fraction: float = 0.5,
    min_count: int = 10,
) -> str | None:
    """A message when the pseudo labels crowd onto a few classes, else None.

    Collapse: one class holding more than `max_fraction` of the pseudo labels, or their entropy below
    `min_entropy` of the largest entropy N labels can have over K classes (log min(K, N): a batch of 32
    labels over 1,000 classes cannot reach log 1000, and is not collapsed for that). Checked only for
    K >= 4 classes (with 2 or 3, a majority is normal) and N >= `min_count` labels (fewer tell nothing)."""
    counts = [max(0.0, float(c)) for c in histogram]
    total, k = sum(counts), len(counts)
    if k < 4 or total < min_count:
        return None
    probs = [c / total for c in counts]
    entropy = max(0.0, -sum(p * math.log(p) for p in probs if p > 0) / math.log(min(k, total)))
    top = max(range(k), key=lambda i: probs[i])
    if entropy >= min_entropy and probs[top] <= max_fraction:
        return None
    name = classes[top] if classes is not None else str(top)
    return (
        f"pseudo labels are collapsing: class {name!r} holds {probs[top]:.0%} of them and the normalised entropy "
        f"is {entropy:.2f} (1 = balanced); lower the teacher's lr or mpl_weight, or check the teacher's warm-up."
    )


class CollapseWatch:
    """`collapse_warning` once per episode: at the logging step a collapse starts, not again while it lasts
    (the progress line's plH= and metrics.jsonl keep showing it), again if it ends and comes back."""

    def __init__(self) -> None:
        self.collapsed = False

    def check(self, histogram: Sequence[float], classes: Sequence[str] | None = None) -> str | None:
        message = collapse_warning(histogram, classes)
        onset = message is not None and not self.collapsed
        self.collapsed = message is not None
        return message if onset else None

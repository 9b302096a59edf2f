import math

import pytest

from mpltools.methods.feedback_window import FeedbackWindow, collapse_warning


def test_window_stats_on_hand_values():
    w = FeedbackWindow()
    for h in (0.5, -1.0, 2.0, -0.25, float("nan")):
        w.add(h)
    s = w.summary()
    assert s["diag/h_mean"] == pytest.approx((0.5 - 1.0 + 2.0 - 0.25) / 4)
    assert s["diag/h_abs_median"] == pytest.approx((0.5 + 1.0) / 2)  # |h| sorted: 0.25 0.5 1 2
    assert s["diag/h_pos_frac"] == 0.5
    assert w.summary() == {}  # cleared after each log
    w.add(-3.0)
    assert w.summary() == {"diag/h_mean": -3.0, "diag/h_abs_median": 3.0, "diag/h_pos_frac": 0.0}


def test_collapse_warning_fires_on_collapsed_not_on_balanced():
    assert collapse_warning([100] * 10) is None
    assert collapse_warning([12, 9, 11, 10, 8, 10, 10, 11, 9, 10]) is None
    msg = collapse_warning([90, 2, 2, 2, 1, 1, 1, 1, 0, 0], classes=[str(c) for c in range(10)])
    assert msg is not None and "class '0' holds 90%" in msg
    assert collapse_warning([50, 50, 0, 0, 0, 0, 0, 0, 0, 0]) is not None  # entropy log2/log10 = 0.30 < 0.5
    assert math.log(2) / math.log(10) < 0.5
    assert collapse_warning([90, 10]) is None  # K < 4: not checked
    assert collapse_warning([0, 0, 0, 0]) is None

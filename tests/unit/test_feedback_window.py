import math

import pytest

from mpltools.methods.feedback_window import CollapseWatch, FeedbackWindow, collapse_warning


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


def test_collapse_warning_judges_a_small_batch_by_what_it_can_reach():
    # 32 distinct pseudo labels over 1,000 classes: as spread as 32 labels can be (log 32 / log 1000 = 0.50
    # would have been read as a collapse when normalised by log K)
    spread = [1] * 32 + [0] * 968
    assert collapse_warning(spread) is None
    assert collapse_warning([4] * 8 + [0] * 992) is None  # 32 labels on 8 classes: log 8 / log 32 = 0.6
    assert collapse_warning([8] * 4 + [0] * 996) is not None  # 32 labels on 4 classes: log 4 / log 32 = 0.4
    assert collapse_warning([16, 16] + [0] * 998) is not None  # 32 labels on 2 classes: log 2 / log 32 = 0.2
    assert collapse_warning([5, 2, 1, 0]) is None  # 8 labels: too few to judge (min_count 10)
    assert collapse_warning([9, 1, 0, 0]) is not None  # 10 labels, 90 % in one class
    assert "entropy is 0.00" in collapse_warning([30, 0, 0, 0, 0])  # not "-0.00"


def test_collapse_watch_warns_at_the_onset_of_each_episode():
    balanced, collapsed = [10] * 10, [91] + [1] * 9
    watch = CollapseWatch()
    said = [watch.check(h) is not None for h in (balanced, collapsed, collapsed, collapsed, balanced, collapsed)]
    assert said == [False, True, False, False, False, True]

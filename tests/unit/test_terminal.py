"""Terminal manners of the progress line: 80 columns on a terminal, plain lines in a log file."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from mpltools import log

METRICS = "loss_t 2.3026 loss_s 2.3026 h +0.0012 top1 0.8123 lr_s 0.0500 lr_t 0.0500 uda 0.4321"


@pytest.mark.parametrize(
    "description, total, unit",
    [
        ("train mpl", 300_000, "steps"),
        ("reduced: predict", 130_000_000, "images"),  # long name, nine-digit total: still bar, rate and ETA
    ],
)
def test_progress_at_80_columns_keeps_bar_rate_elapsed_and_eta(description, total, unit):
    term = Console(file=io.StringIO(), width=80, force_terminal=True, record=True, color_system=None)
    prog = log.make_progress(term)
    done = total * 2 // 5
    task = prog.add_task(
        description, total=total, rate=f"{log.compact(123_456.7)} {unit}/s", extra=METRICS, count=log._count(done, total)
    )
    prog.update(task, completed=done)
    term.print(prog.get_renderable())
    lines = term.export_text().rstrip("\n").split("\n")
    assert all(len(line) <= 80 for line in lines), lines
    bar_line = lines[0]
    count = f"{log.compact(done)}/{log.compact(total)}"
    for part in (description, "━━", count, "40%", f"123.5k {unit}/s", "0:00:", "eta"):
        assert part in bar_line, (part, bar_line)
    assert " ".join(line.strip() for line in lines[1:]) == METRICS  # whole, below the bar (wrapped, not cut)
    assert "…" not in "".join(lines)


def test_compact_counts():
    assert [log.compact(n) for n in (0, 7, 99_999, 100_000, 433_055, 43_333_333, 1_300_000_000)] == [
        "0",
        "7",
        "99999",
        "100.0k",
        "433.1k",
        "43.3M",
        "1.3G",
    ]


def test_progress_without_terminal_prints_plain_unabbreviated_lines(monkeypatch):
    stream = io.StringIO()  # not a tty, like a log file
    monkeypatch.setattr(log, "console", Console(file=stream, width=80))
    monkeypatch.setattr(log._Bar, "_LOG_EVERY_S", 0.0)
    monkeypatch.setattr(log, "_quiet", False)
    with log.progress("train mpl", total=1000, unit="steps") as bar:
        bar.advance(400, extra=METRICS)
        bar.advance(600, extra=METRICS)
    text = stream.getvalue()
    assert "\x1b" not in text and "…" not in text and "━" not in text
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == 3  # two periodic lines and the final one, none cut to 80 columns
    assert lines[0].startswith("train mpl: 400/1000 (40%) ") and " steps/s elapsed 0:00:0" in lines[0]
    assert " eta 0:00:0" in lines[0] and lines[0].endswith("| " + METRICS)
    assert lines[-1].startswith("train mpl: 1000/1000 (100%) ") and " eta 0:00:00 " in lines[-1]


def test_quiet_progress_prints_nothing(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(log, "console", Console(file=stream, width=80))
    monkeypatch.setattr(log, "_quiet", True)
    with log.progress("x", total=3) as bar:
        bar.advance(3)
    assert stream.getvalue() == ""


def test_live_progress_on_a_terminal(monkeypatch):
    term = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    monkeypatch.setattr(log, "console", term)
    monkeypatch.setattr(log, "_quiet", False)
    with log.progress("train mpl", total=250_000, unit="steps") as bar:
        bar.advance(100_000, extra=METRICS)
    text = term.file.getvalue()
    assert "100.0k/250.0k" in text and "steps/s" in text and "eta" in text and METRICS.split()[0] in text


def test_info_lines_are_not_cut_at_80_columns_in_a_log_file(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(log, "console", Console(file=stream, width=80))
    monkeypatch.setattr(log, "_quiet", False)
    message = "unlabelled: 0 worker(s), 0 queued batch(es) each, 5 KB per batch; estimated loader memory 25 KB"
    log.info(message)
    log.warn(message)
    assert stream.getvalue() == f"{message}\nwarning: {message}\n"


def test_a_resumed_run_counts_only_new_steps_in_rate_and_eta(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(log, "console", Console(file=stream, width=80))
    monkeypatch.setattr(log, "_quiet", False)
    monkeypatch.setattr(log._Bar, "_LOG_EVERY_S", 0.0)
    now = [100.0]
    monkeypatch.setattr(log.time, "perf_counter", lambda: now[0])
    with log.progress("train mpl", total=1000, unit="steps", start=600) as bar:
        now[0] = 110.0
        bar.advance(100)  # 100 new steps in 10 s; the 600 resumed ones are not part of the rate
    first, final = stream.getvalue().splitlines()
    assert first == "train mpl: 700/1000 (70%) 10.0 steps/s elapsed 0:00:10 eta 0:00:30"
    assert final == first


@pytest.mark.parametrize("width", [79, 70, 60, 50, 40])
@pytest.mark.parametrize("description, total", [("train mpl", 300_000), ("reduced: predict", 130_000_000)])
def test_below_80_columns_the_count_and_eta_stay_and_the_rate_goes_first(width, description, total):
    term = Console(file=io.StringIO(), width=width, force_terminal=True, record=True, color_system=None)
    prog = log.make_progress(term)
    done = total * 2 // 5
    task = prog.add_task(
        description, total=total, rate=f"{log.compact(123_456.7)} steps/s", extra=METRICS, count=log._count(done, total)
    )
    prog.update(task, completed=done)
    term.print(prog.get_renderable())
    lines = term.export_text().rstrip("\n").split("\n")
    bar_line = lines[0]
    assert all(len(line) <= width for line in lines), lines
    assert "…" not in bar_line  # columns are dropped whole, never cut
    count = f"{log.compact(done)}/{log.compact(total)}"
    assert count in bar_line and "eta -:--:--" in bar_line, bar_line  # step/total and the ETA, always
    kept = [part for part in ("steps/s", "0:00:00 eta", "40%", "━") if part in bar_line]
    # what is shown is a prefix of what matters: the rate goes first, then the elapsed time, the percentage, the bar
    assert kept == ["steps/s", "0:00:00 eta", "40%", "━"][4 - len(kept) :], (kept, bar_line)
    if width <= 60:
        assert "steps/s" not in bar_line
    assert " ".join(line.strip() for line in lines[1:]) == METRICS


def test_a_run_that_is_already_done_prints_no_rate_or_eta(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(log, "console", Console(file=stream, width=80))
    monkeypatch.setattr(log, "_quiet", False)
    with log.progress("train mpl", total=200, unit="steps", start=200):
        pass
    assert stream.getvalue() == "train mpl: 200/200 (100%), nothing left to do\n"

"""Shared fixtures: run `mpl` in-process (Typer's CliRunner) or as a real subprocess (tests/e2e/helpers.py).

Both return `Ran(exit_code, stdout, stderr)`, so a test can be written once and run both ways.
"""

from __future__ import annotations

import signal

import pytest

from tests.e2e import helpers


@pytest.fixture
def run_cli():
    """run_cli(*args, input=None) -> Ran: `mpl ARGS` in this process; an exception that escapes the CLI's own
    error handling is re-raised (so a crash never passes for an exit code of 1)."""
    return helpers.run_cli


@pytest.fixture
def run_subprocess():
    """run_subprocess(*args, input=None, cwd=None, timeout=120) -> Ran: `python -m mpltools ARGS` as a child process
    (stdin is /dev/null unless `input` is given)."""
    return helpers.run_subprocess


@pytest.fixture(autouse=True)
def _signal_state():
    """Each test starts with the process's SIGINT/SIGTERM handlers and `mpltools.signals` state as they were. An
    in-process `main()` keeps its handlers for the rest of the process (as the command line does), and one that
    was interrupted ignores later signals: without this, the tests that run after it in the same worker see that."""
    from mpltools import signals

    handlers = {sig: signal.getsignal(sig) for sig in signals.SIGNALS}
    state = dict(vars(signals._STATE))
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    vars(signals._STATE).update(state)


def pytest_collection_modifyitems(items):
    """Files that hold `slow` tests first, the others after (each group in collection order). `.ci/test` hands whole
    files to its workers in this order (`--dist loadfile --no-loadscope-reorder`), so the long study files start at
    once instead of last, where one of them would end the run on a single worker."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)

"""SIGTERM is Ctrl-C, from a command's first line to its last (DESIGN §2).

`handled()` wraps a whole `mpl` command (`mpltools.cli.main` enters it first thing). Inside it:

- SIGINT and SIGTERM raise `SignalInterrupt` (a KeyboardInterrupt) in the main thread, so every cleanup path
  of Ctrl-C runs for SIGTERM too (what schedulers and `timeout` send): atomic outputs remove their temporary
  siblings, a new run folder that has no state yet is removed, the private download folder is deleted, and
  the command exits 130;
- once one signal has interrupted the command, later ones are deferred until the process ends: a second
  SIGTERM while the command cleans up can neither cut the cleanup short nor turn 130 into 143;
- `stop_requests()` is the training loop's softer mode: the first signal only sets `requested` (the loop saves
  a resume state at the end of its step, then raises Interrupted), a second one interrupts at once.

DataLoader workers ignore both signals unless their main process sends them (`ignore_in_worker`): a signal sent
to the whole process group (Ctrl-C in a terminal, `timeout`, a scheduler) is the main process's to act on, and it
stops its workers as it stops.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalInterrupt(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM; `name` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.name = signal.Signals(signum).name


class _State:
    """The process's signal state (one per process: signal handlers are per process too)."""

    def __init__(self):
        self.installed = False
        self.running = False  # a command runs under `handled()`
        self.restore = False  # ... and the caller's handlers come back afterwards (`mpltools.run`)
        self.interrupted = False  # a signal has interrupted the command: while it runs, later ones are deferred
        self.deferred: list[int] = []
        self.stop: Stop | None = None  # the training loop's stop request, while it runs
        self.defer = False  # inside `deferred()`: a signal is kept in `pending` until the section ends
        self.pending: int | None = None


_STATE = _State()


def _handle(signum, frame) -> None:
    if _STATE.defer:
        _STATE.pending = _STATE.pending or signum
        return
    if _STATE.interrupted and _STATE.running:
        _STATE.deferred.append(signum)
        return
    stop = _STATE.stop
    if stop is not None and not stop.requested:
        stop.requested, stop.signum = True, signum
        return
    interrupt_now(signum)


def interrupt_now(signum: int = signal.SIGINT) -> None:
    """Raise SignalInterrupt; from now on this process defers further signals (it is cleaning up)."""
    _STATE.interrupted = True
    raise SignalInterrupt(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """A short section that a signal must not cut in two (committing an output with two renames, releasing a lock):
    a signal that arrives inside it acts when the section ends."""
    outer, _STATE.defer = _STATE.defer, True
    try:
        yield
    finally:
        _STATE.defer = outer
        if not outer and _STATE.pending is not None:
            signum, _STATE.pending = _STATE.pending, None
            _handle(signum, None)


def cleaning_up() -> None:
    """Say that the command is stopping (an Interrupted is on its way out): defer the signals that follow.

    Under `mpl` they are ignored from now on: the interpreter puts the default handlers back when it shuts
    down, and a SIGTERM then would still end the process with 143."""
    _STATE.interrupted = True
    if _STATE.running and not _STATE.restore and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def ignore_in_worker() -> None:
    """In a DataLoader worker process: leave SIGINT and SIGTERM sent from elsewhere (a terminal's Ctrl-C, `timeout`
    or a scheduler signalling the whole process group) to the main process, which stops its workers as it stops;
    otherwise a worker would die first and the main process would fail on the dead worker instead of saving its
    state and exiting 130. The main process's own SIGTERM (PyTorch and multiprocessing end workers that way)
    still ends the worker at once. The signals are blocked and taken by a thread that can see who sent them."""
    if _WORKER.get("pid") == os.getpid() or multiprocessing.parent_process() is None:
        return  # done already, or not a worker process at all
    _WORKER["pid"] = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    threading.Thread(target=_worker_signals, name="mpl-worker-signals", daemon=True).start()


_WORKER: dict = {}


def child_defaults() -> None:
    """`preexec_fn` of a subprocess started by a worker: the child gets SIGINT and SIGTERM unblocked (a blocked mask
    is inherited across exec)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def in_worker() -> bool:
    """Whether this process is a worker whose signals `ignore_in_worker` blocked."""
    return _WORKER.get("pid") == os.getpid()


def _worker_signals() -> None:
    while True:
        info = signal.sigwaitinfo(SIGNALS)
        if info.si_pid == os.getppid():
            os._exit(0)


def install() -> bool:
    """Install the handlers (main thread only; elsewhere nothing happens). Returns whether they are installed;
    a second call changes nothing. Outside a command (`handled()`) they raise SignalInterrupt at every signal."""
    if _STATE.installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in SIGNALS:
        signal.signal(sig, _handle)
    _STATE.installed = True
    return True


@contextmanager
def handled(restore: bool = False) -> Iterator[None]:
    """Run a command under the handlers. `restore=True` (a command run from Python, `mpltools.run`) puts the
    caller's handlers back afterwards; the command line keeps them until the process ends, so a signal that
    arrives while the interpreter shuts down is deferred too."""
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    fresh, outer = not _STATE.installed, _STATE.running
    install()
    if not outer:
        _STATE.running, _STATE.restore, _STATE.interrupted, _STATE.deferred = True, restore, False, []
    try:
        yield
    finally:
        if restore and not outer:
            _STATE.running = False
            if fresh and _STATE.installed:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                _STATE.installed = False


class Stop:
    """The training loop's stop request: `requested` turns True at the first SIGINT/SIGTERM."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT


@contextmanager
def stop_requests() -> Iterator[Stop]:
    """`with stop_requests() as stop:` the first signal sets `stop.requested` instead of interrupting; a second
    interrupts at once. Leaving the block with an exception (the loop's Interrupted after its state is saved)
    defers the signals that follow; a request that arrived after the loop's last check interrupts on leaving."""
    with handled(restore=True):  # under `mpl` the handlers are already there and stay
        stop, outer = Stop(), _STATE.stop
        _STATE.stop = stop
        try:
            yield stop
        except BaseException:
            cleaning_up()
            raise
        finally:
            _STATE.stop = outer
        if stop.requested:
            interrupt_now(stop.signum)

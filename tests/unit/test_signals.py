"""`mpltools.signals`: SIGTERM is Ctrl-C; the training loop's stop request; signals deferred while cleaning up."""

from __future__ import annotations

import os
import signal

import pytest

from mpltools import signals


def test_the_first_signal_requests_a_stop_and_a_second_interrupts_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(signals.SignalInterrupt) as raised:
        with signals.stop_requests() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested
            os.kill(os.getpid(), signal.SIGINT)
            raise AssertionError("a second signal must interrupt at once")
    assert raised.value.name == "SIGINT"
    assert signal.getsignal(signal.SIGTERM) == before, "the handlers of the process are not restored"


def test_a_stop_requested_after_the_loop_s_last_check_interrupts_on_leaving():
    with pytest.raises(signals.SignalInterrupt) as raised:
        with signals.stop_requests():
            os.kill(os.getpid(), signal.SIGTERM)
    assert raised.value.name == "SIGTERM"


def test_sigterm_is_ctrl_c_and_later_signals_wait_for_the_cleanup():
    cleaned, before = [], signal.getsignal(signal.SIGINT)
    with signals.handled(restore=True):
        with pytest.raises(KeyboardInterrupt):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # during the cleanup: deferred, the cleanup runs to its end
                cleaned.append(True)
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGINT) == before


def test_outside_a_dataloader_worker_process_nothing_is_blocked():
    signals.ignore_in_worker()  # as when a test fakes a worker's context in the main process
    assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_signal_inside_a_deferred_section_acts_when_it_ends():
    done = []
    with signals.handled(restore=True), pytest.raises(KeyboardInterrupt):
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("the section ran to its end")
    assert done == ["the section ran to its end"]

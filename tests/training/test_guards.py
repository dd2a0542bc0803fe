"""Training guards: signal handling around a run (the callbacks run in tests/reliability)."""

from __future__ import annotations

import os
import pickle
import signal

import pytest

from hsftrain.errors import SAME_SIGNAL_S, Interrupted
from hsftrain.training.guards import SignalState, catch_signals


def test_signals_become_a_request_and_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    state = SignalState()
    with catch_signals(state):
        os.kill(os.getpid(), signal.SIGTERM)
        assert state.signum == signal.SIGTERM  # nothing raised: the run stops at a batch end
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_second_ctrl_c_stops_at_once() -> None:
    with pytest.raises(KeyboardInterrupt), catch_signals() as state:
        os.kill(os.getpid(), signal.SIGINT)
        assert state.signum == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)  # the same Ctrl+C forwarded by a launcher
        assert not state.forced
        state.at -= SAME_SIGNAL_S + 1  # a second Ctrl+C, pressed later
        os.kill(os.getpid(), signal.SIGINT)
    assert state.forced


def test_a_copy_in_another_process_keeps_the_request_not_the_handler() -> None:
    with catch_signals() as state:
        os.kill(os.getpid(), signal.SIGTERM)
        copy = pickle.loads(pickle.dumps(state))
    assert copy.signum == signal.SIGTERM and copy.handler is None and not copy.forced


def test_interrupted_exit_codes() -> None:
    assert Interrupted("x", signal.SIGTERM).exit_code == 143
    assert Interrupted("x", signal.SIGINT).exit_code == 130

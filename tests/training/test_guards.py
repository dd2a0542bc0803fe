"""Training guards: signal handling around a run (the callbacks run in tests/reliability)."""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from hsftrain.core.errors import SAME_SIGNAL_S, Interrupted
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


def _spawned(last_line: str) -> Exception:
    from torch.multiprocessing.spawn import ProcessRaisedException

    trace = f'\n\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n  File "x.py", line 1, in f\n    raise\n{last_line}\n'
    return ProcessRaisedException(trace, 1, 1234)


def test_an_error_in_a_spawned_process_is_shown_as_in_one_process(tmp_path: Path) -> None:
    from hsftrain.data.nifti import DataError
    from hsftrain.training.guards import Preemption, _spawned_error

    trainer = SimpleNamespace(default_root_dir=str(tmp_path))
    preemption = Preemption(SignalState(), "hsftrain train resume=runs/x")
    stop = _spawned_error(
        _spawned("hsftrain.core.errors.Interrupted: SIGINT: training stopped at epoch 2, batch 1"),
        trainer,  # type: ignore[arg-type]
        preemption,
    )
    assert isinstance(stop, Interrupted) and stop.exit_code == 130
    assert str(stop) == "SIGINT: training stopped at epoch 2, batch 1"
    bad = _spawned_error(
        _spawned("hsftrain.data.nifti.DataError: a.nii.gz: truncated"), trainer, preemption
    )  # type: ignore[arg-type]
    assert isinstance(bad, DataError) and str(bad) == "a.nii.gz: truncated"
    crash = _spawned("RuntimeError: a bug")
    assert _spawned_error(crash, trainer, preemption) is crash  # type: ignore[arg-type]
    preemption.state.signum = signal.SIGTERM  # killed by the signal before it could save
    killed = _spawned_error(crash, trainer, preemption)  # type: ignore[arg-type]
    assert isinstance(killed, Interrupted) and killed.exit_code == 143
    assert "no checkpoint had been saved yet" in str(killed) and "start over" in str(killed)

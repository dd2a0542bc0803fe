"""Worker processes and signals: a Ctrl+C while a worker starts cannot kill it, and a pool
broken by a dead worker keeps the subjects other workers finished."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from hsftrain.core.errors import StopRequest
from hsftrain.inference.layout import outputs_of
from hsftrain.inference.subject import Job
from hsftrain.inference.workers import HELD, _report, signals_held


def _blocked_at_start(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, set())))


def test_a_process_started_while_signals_are_held_starts_with_them_held() -> None:
    context = multiprocessing.get_context("spawn")  # as the workers are started
    queue = context.Queue()
    with signals_held():
        process = context.Process(target=_blocked_at_start, args=(queue,))
        process.start()
    try:
        blocked = set(queue.get(timeout=60))
    finally:
        process.join(60)
    assert {int(s) for s in HELD} <= blocked
    assert not HELD & signal.pthread_sigmask(signal.SIG_BLOCK, set())  # released here


def test_a_signal_while_workers_start_still_reaches_this_process() -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        time.sleep(0.05)
        assert got == [signal.SIGTERM]  # not lost (another thread may have taken it at once)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _broken_job(tmp_path: Path) -> tuple[Future, Job]:
    mri = tmp_path / "sub-01_T1w.nii.gz"
    mri.touch()
    future: Future = Future()
    future.set_exception(BrokenProcessPool("a worker died"))
    return future, Job(mri, outputs_of(mri, tmp_path, None), "sub-01")


@pytest.mark.parametrize("stopped", [False, True])
def test_a_subject_written_before_the_pool_broke_is_reported_done(
    tmp_path: Path, stopped: bool
) -> None:
    future, job = _broken_job(tmp_path)
    stop = StopRequest()
    if stopped:
        stop.signum = signal.SIGINT
    started = time.time()
    job.outputs.done.write_bytes(b"written by its worker")
    report = _report(future, job, started, stop)
    assert report is not None and report.status == "done" and report.outputs is job.outputs


@pytest.mark.parametrize("stopped", [False, True])
def test_a_subject_not_written_when_the_pool_broke_is_failed_or_left_to_the_rerun(
    tmp_path: Path, stopped: bool
) -> None:
    future, job = _broken_job(tmp_path)
    job.outputs.done.write_bytes(b"left by an earlier run")
    old = time.time() - 3600
    os.utime(job.outputs.done, (old, old))  # files.overwrite=true: redone, not finished
    stop = StopRequest()
    if stopped:
        stop.signum = signal.SIGINT
    report = _report(future, job, time.time(), stop)
    if stopped:
        assert report is None  # a rerun segments it
    else:
        assert report is not None and report.status == "failed"
        assert "worker process segmenting it died" in report.error

"""``hardware.jobs=K``: K worker processes segmenting subjects side by side.

Each worker is a fresh (``spawn``) process that loads the models once, with
``intra_op_num_threads`` divided among the workers (the configured count, or every usable
core, over K; at least one each), and, with
``hardware.devices``, its own GPU (worker k on ``devices[k % len(devices)]``). Subjects
are handed out one at a time; each is segmented by exactly the code a single process runs
(:func:`hsftrain.inference.subject.run_subject`: the same atomic writes, native
segmentation last, failures reported per subject), and its result does not depend on the
worker that took it or on the order subjects finish in.

A worker that dies (killed by the out-of-memory killer, ...) fails the subjects it and the
pool were running with a line saying so; finished subjects stay finished and a rerun
segments the rest.

Workers ignore SIGINT and SIGTERM (a Ctrl+C reaches every process of the terminal) and
die with their parent; the parent decides: after a signal no new subject is handed out,
the subjects in progress are finished and the workers end; a second Ctrl+C kills them.
Either way every worker is reaped before :func:`run_parallel` returns or raises.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from hsftrain.core.errors import StopRequest
from hsftrain.inference.pipeline import SubjectReport
from hsftrain.inference.settings import Settings
from hsftrain.inference.subject import Job, run_subject

log = logging.getLogger(__name__)

#: Linux ``prctl`` option: the signal a process gets when its parent ends.
PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity: a SLURM allocation's, ...)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(settings: Settings, jobs: int) -> int:
    """ONNX Runtime intra-op threads of each of ``jobs`` workers: the configured count (or
    every usable core) divided among them, at least one."""
    total = settings.intra_op_num_threads or usable_cores()
    return max(1, total // max(1, jobs))


def _leave_signals_to_parent() -> None:
    """In a worker: ignore SIGINT and SIGTERM (a Ctrl+C reaches every process of the
    terminal; the parent decides what stops, and when), and die with the parent (Linux:
    a parent killed with SIGKILL leaves no worker waiting for subjects forever)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # started with them held: signals_held
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid != os.getppid():
        os._exit(1)  # the parent ended before the line above


#: The signals a worker leaves to its parent.
HELD = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held (blocked, not lost) in this thread while it starts worker
    processes: a process started meanwhile inherits the block, so a Ctrl+C during its
    start-up (imports, before :func:`_leave_signals_to_parent`) cannot kill it and break
    the pool (which would lose the reports of subjects other workers were finishing). This
    process still gets such a signal: through another of its threads at once, or when the
    block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows: no signal masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


#: The state of a worker process: its settings and segmenters (set by :func:`_start`).
_WORKER: dict[str, Any] = {}


def _start(
    settings: Settings,
    paths: list[Path],
    t2_paths: list[Path] | None,
    threads: int,
    slots: Any,
    level: int,
) -> None:
    """Worker initializer: signals, logging, threads, device, models. Never raises: an
    error is kept and reported by every task of this worker (a raising initializer would
    break the pool with no message)."""
    _leave_signals_to_parent()
    try:
        from hsftrain.core.logs import setup_logging

        setup_logging(level <= logging.DEBUG)
        logging.getLogger("hsftrain").setLevel(level)
        slot = int(slots.get(timeout=60))
        device = settings.devices[slot % len(settings.devices)] if settings.devices else None
        from hsftrain.inference.segmenter import Segmenter, load_engines

        engines = load_engines(settings, paths, threads, device, quiet=True)
        _WORKER["segmenter"] = Segmenter.from_settings(engines, settings)
        _WORKER["t2_segmenter"] = None
        if t2_paths is not None and settings.multispectral is not None:
            t2 = settings.multispectral.t2_models or []
            t2_engines = load_engines(settings, t2_paths, threads, device, t2, quiet=True)
            _WORKER["t2_segmenter"] = Segmenter.from_settings(t2_engines, settings)
        log.debug("worker %d ready: %d thread(s), device %s", slot, threads, device)
    except Exception as err:  # the parent checked the models already: rare (a GPU missing)
        _WORKER["error"] = err
    _WORKER["settings"] = settings


def _run(job: Job) -> SubjectReport:
    """Worker task: one subject."""
    if "error" in _WORKER:
        from hsftrain.inference.subject import failure_line

        error = failure_line(job.mri, _WORKER["error"])
        return SubjectReport(job.subject, job.mri, "failed", error=error, outputs=job.outputs)
    return run_subject(
        job, _WORKER["segmenter"], _WORKER["settings"], None, _WORKER["t2_segmenter"]
    )


def run_parallel(
    jobs: Sequence[Job],
    settings: Settings,
    paths: list[Path],
    t2_paths: list[Path] | None,
    on_done: Callable[[SubjectReport], None] | None = None,
    stop: StopRequest | None = None,
) -> list[SubjectReport]:
    """Segment ``jobs`` in ``settings.jobs`` worker processes (never more than there are
    subjects); returns their reports in the order they finished.

    Subjects are handed out one at a time, so once ``stop`` holds a signal no new one
    starts: the subjects in progress are finished, the workers end and the reports so far
    are returned. Any other exit (a second Ctrl+C: :class:`KeyboardInterrupt`) kills the
    workers first; none is left running either way.

    Args:
        paths: the resolved model files (resolved once, by the caller).
        t2_paths: the resolved T2 model files of a multispectral run (None: the same).
        on_done: called in this process with each report as it arrives.
        stop: the run's :func:`~hsftrain.core.errors.stop_on_signals` request.
    """
    stop = stop if stop is not None else StopRequest()
    workers = max(1, min(settings.jobs, len(jobs)))
    threads = threads_per_worker(settings, workers)
    log.info(
        "%d worker process(es), %d inference thread(s) each%s",
        workers,
        threads,
        f", GPUs {settings.devices}" if settings.devices else "",
    )
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for slot in range(workers):
        slots.put(slot)
    level = logging.getLogger("hsftrain").getEffectiveLevel()
    pool = ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_start,
        initargs=(settings, paths, t2_paths, threads, slots, level),
    )
    reports: list[SubjectReport] = []
    todo = iter(jobs)
    running: dict[Future[SubjectReport], tuple[Job, float]] = {}  # job, when handed out
    try:
        while True:
            while stop.signum is None and len(running) < workers:
                job = next(todo, None)
                if job is None:
                    break
                try:
                    with signals_held():  # submit starts a worker process when one is due
                        future = pool.submit(_run, job)
                except BrokenProcessPool as err:  # a worker died: failed as those it ran
                    future = Future()
                    future.set_exception(err)
                running[future] = (job, time.time())
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                report = _report(future, *running.pop(future), stop)
                if report is not None:
                    reports.append(report)
                    if on_done:
                        on_done(report)
    except BaseException:
        _kill_workers(pool)
        raise
    pool.shutdown(wait=True)
    return reports


def _report(
    future: Future[SubjectReport], job: Job, started: float, stop: StopRequest
) -> SubjectReport | None:
    """The report of a finished task; None for a subject abandoned by a stop (its worker
    ended by the signal before finishing it: a rerun segments it).

    A pool broken by another worker's death loses the reports of every subject in progress,
    even one whose worker finished writing it: a subject whose native segmentation (written
    last) was written since it was handed out (``started``, a time) is reported done, its
    volumes read back from its own table."""
    try:
        return future.result()
    except BrokenProcessPool as err:
        log.debug("%s: %s", job.mri, err)
        if _written_since(job.outputs.done, started):
            return SubjectReport(job.subject, job.mri, "done", outputs=job.outputs)
        if stop.signum is not None:
            return None
        report = SubjectReport(
            job.subject,
            job.mri,
            "failed",
            error=f"{job.mri}: the worker process segmenting it died (killed, e.g. out "
            "of memory): rerun with fewer hardware.jobs; finished subjects are kept",
            outputs=job.outputs,
        )
        log.error("%s", report.error)
        return report


def _written_since(path: Path, started: float) -> bool:
    """``path`` exists and was written at or after ``started`` (not left by an earlier run)."""
    try:
        return path.stat().st_mtime >= started - 1.0  # file systems round their times
    except OSError:
        return False


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop at once: kill every worker (they ignore SIGINT and SIGTERM) and reap it."""
    pool.shutdown(wait=False, cancel_futures=True)
    for process in multiprocessing.active_children():
        process.kill()
        process.join()

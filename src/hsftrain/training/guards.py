"""Training guards: stop at the first non-finite value, and survive pre-emption.

* :class:`FiniteGuard` stops a run at the first NaN/Inf loss (before its backward pass,
  so the weights stay good), weight or validation loss, with one clear error; the
  checkpoints already on disk (``last.ckpt`` of the last finished epoch) are kept and no
  model is exported.
* :class:`Preemption` with :func:`catch_signals`: SIGTERM (a SLURM pre-emption, ``kill``)
  or SIGINT (Ctrl+C) asks the run to stop; at the end of the current batch the state of
  the epoch in progress is saved to ``checkpoints/last.ckpt`` (atomically, and only if
  every weight is finite) and :class:`~hsftrain.core.errors.Interrupted` says how to resume.
  The command exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT).
  A second Ctrl+C stops at once, without saving (the processes training are killed).
* Several processes (``lightning=ddp``): every process that trains catches the signals
  itself (Lightning's own SIGTERM handler, which runs a collective inside the handler and
  hangs DDP, is switched off) and all stop at the same batch; the launching process of
  ``ddp_spawn``, which does not train, passes the signal on (:func:`spawned_forward`) and
  reports its processes' stop or user error as one process would (:func:`fit`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch

from hsftrain.core.errors import (
    Interrupted,
    NonFiniteError,
    StopRequest,
    UserError,
    signal_name,
    stop_on_signals,
)
from hsftrain.core.nonfinite import nonfinite_tensors

log = logging.getLogger(__name__)


def _last_checkpoint(trainer: L.Trainer) -> str:
    path = Path(str(trainer.default_root_dir)) / "checkpoints" / "last.ckpt"
    if path.is_file():
        epoch = "?"
        with contextlib.suppress(Exception):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
            epoch = str(int(ckpt.get("epoch", -1)) + 1)
        return f"{path} (after epoch {epoch}) is kept"
    return "no checkpoint had been saved yet"


def _next_step(trainer: L.Trainer, resume_command: str) -> str:
    """The resume command, or starting again when no checkpoint was saved."""
    if (Path(str(trainer.default_root_dir)) / "checkpoints" / "last.ckpt").is_file():
        return f"Continue with: {resume_command}"
    return "nothing to resume: run the same command again to start over"


def _of(epoch: int, trainer: L.Trainer) -> str:
    """Epoch ``epoch`` (0-based) as the table and progress bar show it: ``k/N``."""
    epochs = trainer.max_epochs
    return f"{epoch + 1}/{epochs}" if epochs and epochs > 0 else str(epoch + 1)


class FiniteGuard(L.Callback):
    """Stop training at the first non-finite loss, weight or validation loss.

    Raises (from the hooks, through ``trainer.fit``):
        NonFiniteError: where it happened, what is kept, what to try.
    """

    def _stop(self, trainer: L.Trainer, what: str) -> None:
        epoch, batch = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx
        raise NonFiniteError(
            f"training stopped at epoch {_of(epoch, trainer)}, batch {batch + 1}: {what}; "
            f"{_last_checkpoint(trainer)}. Check the training images for NaN/Inf voxels, "
            "then lower models.lr (or models.optimizer.agc_clipping) or use "
            "lightning.precision=32-true"
        )

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self._stop(trainer, f"the training loss is {float(loss.detach().float().sum())}")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        bad = nonfinite_tensors([*pl_module.named_parameters(), *pl_module.named_buffers()])
        if bad:
            self._stop(trainer, f"weights became NaN/Inf after the update ({', '.join(bad[:3])})")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs before ModelCheckpoint's own on_validation_end (Lightning puts it last)
        loss = trainer.callback_metrics.get("val/epoch/loss")
        if loss is not None and not bool(torch.isfinite(loss).all()):
            self._stop(trainer, f"the validation loss is {float(loss)}")


class SignalState(StopRequest):
    """Signals received while :func:`catch_signals` is active (shared with
    :class:`Preemption`).

    A copy that arrives in a process ``ddp_spawn`` started catches SIGTERM and SIGINT
    there at once (before the processes meet), recording them only: the launching
    process decides on a second Ctrl+C.
    """

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            self.catch()


@contextlib.contextmanager
def catch_signals(
    state: SignalState | None = None, forward: Callable[[int], None] | None = None
) -> Iterator[SignalState]:
    """Turn SIGTERM and SIGINT into a request to stop at the end of the current batch
    (recorded in ``state``, read by :class:`Preemption`), passed on by ``forward`` (see
    :func:`spawned_forward`).

    A second Ctrl+C raises :class:`KeyboardInterrupt` at once. The previous handlers are
    restored on exit. Does nothing outside the main thread (signals cannot be caught there).
    """
    state = state if state is not None else SignalState()
    with stop_on_signals(
        "saving a resumable checkpoint at the end of this batch",
        state,
        forward,
        at_once="Ctrl+C again to stop at once, without saving",
    ):
        yield state


def _lightning_handlers_off() -> None:
    """Stands in for Lightning's ``register_signal_handlers``: its SIGTERM handler runs a
    collective (a broadcast) inside the handler, which hangs a DDP run whose processes are
    elsewhere; :class:`Preemption` stops every process at the same batch instead."""


def spawned_forward(trainer: L.Trainer) -> Callable[[int], None]:
    """Passes a signal on to the processes ``ddp_spawn`` started (a SIGTERM sent to the
    launching process alone, which does not train, must reach them). Other launches need
    nothing: every process that trains gets the signal or stops with the others."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    def forward(signum: int) -> None:
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _MultiProcessingLauncher):
            launcher.kill(signum)

    return forward


class Preemption(L.Callback):
    """Save the epoch in progress and stop when :func:`catch_signals` got a signal.

    In every process that trains, the handlers of ``state`` replace Lightning's own; with
    several processes, all of them stop at the same batch (one tiny reduce per batch).

    Args:
        state: the :func:`catch_signals` state.
        resume_command: the command that continues the run (logged, and in the error).

    Raises (from the hooks, through ``trainer.fit``):
        Interrupted: after saving ``checkpoints/last.ckpt``.
    """

    def __init__(self, state: SignalState, resume_command: str) -> None:
        self.state = state
        self.resume_command = resume_command

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and hasattr(connector, "register_signal_handlers"):
            connector.register_signal_handlers = _lightning_handlers_off
        self.state.catch()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state.catch()  # in case Lightning installed its own after all

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stop = self.state.signum is not None
        if trainer.world_size > 1:  # every process stops at the same batch (one tiny reduce)
            stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if stop:
            self._save_and_stop(trainer, pl_module, self.state.signum or signal.SIGTERM)

    def _save_and_stop(self, trainer: L.Trainer, pl_module: L.LightningModule, signum: int) -> None:
        epoch, batch = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx
        where = f"epoch {_of(epoch, trainer)}, batch {batch + 1}"
        path = Path(str(trainer.default_root_dir)) / "checkpoints" / "last.ckpt"
        bad = nonfinite_tensors(list(pl_module.state_dict().items()))
        if bad:
            saved = f"the weights are NaN/Inf, so nothing was saved ({_last_checkpoint(trainer)})"
        else:
            save_checkpoint_atomic(trainer, path)
            saved = f"the state of {where} is saved in {path}"
        raise Interrupted(
            f"{signal_name(signum)}: training stopped at {where}; {saved}. "
            f"Continue with: {self.resume_command}",
            signum,
        )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        self._check(trainer, pl_module)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        self._check(trainer, pl_module)


def save_checkpoint_atomic(trainer: L.Trainer, path: Path) -> Path:
    """``trainer.save_checkpoint`` into a temporary file beside ``path``, renamed onto it
    by the global rank 0 (every process takes part in the save, only rank 0 writes), so a
    kill during the save never leaves a half-written ``last.ckpt`` (and a second Ctrl+C
    during it no temporary file)."""
    tmp = path.with_name(f".{path.name}.preempted.hsftrain-tmp.ckpt")
    if trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        trainer.save_checkpoint(str(tmp), weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, path)
    finally:
        if trainer.is_global_zero:
            tmp.unlink(missing_ok=True)
    trainer.strategy.barrier("hsftrain-preempted-checkpoint")
    return path


def fit(
    trainer: L.Trainer,
    module: L.LightningModule,
    data: L.LightningDataModule,
    ckpt_path: str | None,
    preemption: Preemption,
) -> None:
    """``trainer.fit`` that ends, whatever the launch, the way one process does: a stop
    asked by a signal is :class:`Interrupted` (exit 128 + the signal), a user error in a
    process ``ddp_spawn`` started is that error (not a traceback), and a second Ctrl+C
    stops at once after the processes training were killed and reaped.

    Raises:
        Interrupted: SIGTERM / SIGINT (after ``checkpoints/last.ckpt`` was saved, unless a
            second Ctrl+C asked to stop at once).
        UserError: the one-line error of a process that ``ddp_spawn`` started.
    """
    from torch.multiprocessing.spawn import ProcessException

    state = preemption.state
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except ProcessException as err:  # ddp_spawn: a process failed (it is reaped already)
        raise _spawned_error(err, trainer, preemption) from err
    except (KeyboardInterrupt, SystemExit) as err:
        if not state.forced:  # Lightning turns KeyboardInterrupt into SystemExit(1)
            raise
        reap_launched(trainer)
        raise Interrupted(
            f"SIGINT: training stopped at once (a second Ctrl+C), without saving the epoch "
            f"in progress; {_last_checkpoint(trainer)}. "
            f"{_next_step(trainer, preemption.resume_command)}",
            signal.SIGINT,
        ) from err


def reap_launched(trainer: L.Trainer) -> None:
    """Kill and wait for the processes Lightning launched (none left behind)."""
    for proc in list(getattr(trainer.strategy.launcher, "procs", None) or []):
        with contextlib.suppress(Exception):
            proc.kill()
        wait = getattr(proc, "join", None) or proc.wait
        with contextlib.suppress(Exception):
            wait(30)


def _spawned_error(err: Exception, trainer: L.Trainer, preemption: Preemption) -> Exception:
    """The error a failed ``ddp_spawn`` process should show: its own user error (the last
    line of its traceback), :class:`Interrupted` when this process got a signal, else
    ``err`` itself (an internal error keeps its traceback)."""
    import importlib

    lines = [line for line in str(err).strip().splitlines() if line and line[0] != " "]
    name, _, message = (lines[-1] if lines else "").partition(": ")
    module, _, class_name = name.rpartition(".")
    cls: Any = None
    if module.startswith("hsftrain."):
        with contextlib.suppress(ImportError):
            cls = getattr(importlib.import_module(module), class_name, None)
    signum = preemption.state.signum
    if isinstance(cls, type) and issubclass(cls, Interrupted):
        prefix = message.partition(":")[0]
        given = signal.Signals[prefix] if prefix in signal.Signals.__members__ else None
        return Interrupted(message, signum or given or signal.SIGTERM)
    if isinstance(cls, type) and issubclass(cls, UserError):
        try:
            return cls(message)
        except Exception:
            error = UserError(message)
            error.exit_code = cls.exit_code
            return error
    if signum is not None:  # a process ended by the signal before it could save
        return Interrupted(
            f"{signal_name(signum)}: training stopped ({' '.join(str(err).split())}); "
            f"{_last_checkpoint(trainer)}. {_next_step(trainer, preemption.resume_command)}",
            signum,
        )
    return err

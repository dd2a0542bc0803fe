"""Training guards: stop at the first non-finite value, and survive pre-emption.

* :class:`FiniteGuard` stops a run at the first NaN/Inf loss (before its backward pass,
  so the weights stay good), weight or validation loss, with one clear error; the
  checkpoints already on disk (``last.ckpt`` of the last finished epoch) are kept and no
  model is exported.
* :class:`Preemption` with :func:`catch_signals`: SIGTERM (a SLURM pre-emption, ``kill``)
  or SIGINT (Ctrl+C) asks the run to stop; at the end of the current batch the state of
  the epoch in progress is saved to ``checkpoints/last.ckpt`` (atomically, and only if
  every weight is finite) and :class:`~hsftrain.errors.Interrupted` says how to resume.
  The command exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT).
  A second Ctrl+C stops at once, without saving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch

from hsftrain.errors import Interrupted, NonFiniteError, signal_name
from hsftrain.finite import nonfinite_tensors

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


class FiniteGuard(L.Callback):
    """Stop training at the first non-finite loss, weight or validation loss.

    Raises (from the hooks, through ``trainer.fit``):
        NonFiniteError: where it happened, what is kept, what to try.
    """

    def _stop(self, trainer: L.Trainer, what: str) -> None:
        epoch, batch = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx
        raise NonFiniteError(
            f"training stopped at epoch {epoch + 1}, batch {batch + 1}: {what}; "
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


class SignalState:
    """Signals received while :func:`catch_signals` is active (shared with the callback)."""

    def __init__(self) -> None:
        self.signum: int | None = None


@contextlib.contextmanager
def catch_signals(state: SignalState | None = None) -> Iterator[SignalState]:
    """Turn SIGTERM and SIGINT into a request to stop at the end of the current batch
    (recorded in ``state``, read by :class:`Preemption`).

    A second SIGINT raises :class:`KeyboardInterrupt` at once. The previous handlers are
    restored on exit. Does nothing outside the main thread (signals cannot be caught there).
    """
    state = state if state is not None else SignalState()
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if state.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if state.signum is None:
            log.warning(
                "%s received: saving a resumable checkpoint at the end of this batch%s",
                signal_name(signum),
                " (Ctrl+C again to stop at once, without saving)"
                if signum == signal.SIGINT
                else "",
            )
        state.signum = signum

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


class Preemption(L.Callback):
    """Save the epoch in progress and stop when :func:`catch_signals` got a signal.

    Args:
        state: the :func:`catch_signals` state.
        resume_command: the command that continues the run (logged, and in the error).

    Raises (from the hooks, through ``trainer.fit``):
        Interrupted: after saving ``checkpoints/last.ckpt``.
    """

    def __init__(self, state: SignalState, resume_command: str) -> None:
        self.state = state
        self.resume_command = resume_command
        self.saved: Path | None = None

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stop = self.state.signum is not None
        if trainer.world_size > 1:  # every process stops at the same batch (one tiny reduce)
            stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if stop:
            self._save_and_stop(trainer, pl_module, self.state.signum or signal.SIGTERM)

    def _save_and_stop(self, trainer: L.Trainer, pl_module: L.LightningModule, signum: int) -> None:
        epoch, batch = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_idx
        where = f"epoch {epoch + 1}, batch {batch + 1}"
        path = Path(str(trainer.default_root_dir)) / "checkpoints" / "last.ckpt"
        bad = nonfinite_tensors(list(pl_module.state_dict().items()))
        if bad:
            saved = f"the weights are NaN/Inf, so nothing was saved ({_last_checkpoint(trainer)})"
        else:
            self.saved = save_checkpoint_atomic(trainer, path)
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

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # Lightning's own SIGTERM handling stops at a batch boundary too (SIGTERMException)
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and self.saved is None:
            with contextlib.suppress(Interrupted):
                self._save_and_stop(trainer, pl_module, signal.SIGTERM)


def save_checkpoint_atomic(trainer: L.Trainer, path: Path) -> Path:
    """``trainer.save_checkpoint`` into a temporary file beside ``path``, renamed onto it
    by the global rank 0 (every process takes part in the save, only rank 0 writes), so a
    kill during the save never leaves a half-written ``last.ckpt``."""
    tmp = path.with_name(f".{path.name}.preempted.hsftrain-tmp.ckpt")
    if trainer.is_global_zero:
        path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(tmp))
    if trainer.is_global_zero:
        os.replace(tmp, path)
    trainer.strategy.barrier("hsftrain-preempted-checkpoint")
    return path

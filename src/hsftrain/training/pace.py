""":class:`BudgetPace`: a planned run (``budget=``, ``plan=``) kept to its budget at its own pace.

The planner times a few steps of each candidate; a whole epoch under Lightning on a machine
whose speed drifts (a shared CPU, a GPU warming up) can run 10% faster or slower than that.
After its second epoch (the first pays for compilation and warm-up), and again at a quarter,
half and three quarters of the plan, a run measures its own mean pace and re-fits the number
of epochs to the time left (:meth:`~hsftrain.planning.plan.Plan.paced_epochs`), stretching
or shortening the learning-rate schedule so that the cosine still ends with the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import lightning as L

from hsftrain.optim import WarmupCosine
from hsftrain.planning.plan import PACE_EPOCH, Plan

log = logging.getLogger(__name__)


class BudgetPace(L.Callback):
    """Re-fits a planned run's epochs to its own pace: at the start of epoch
    :data:`PACE_EPOCH` + 1 and again at 25%, 50% and 75% of the plan, from the mean pace
    since epoch :data:`PACE_EPOCH` (every process takes rank 0's answer), stretching the
    learning-rate schedule (and Demon's momentum decay) to the new number of steps.
    ``on_change(epochs)`` records the new plan (``plan.yaml``, ``config.yaml``)."""

    def __init__(
        self, plan: Plan, started: float, on_change: Callable[[int], None] | None = None
    ) -> None:
        self.plan, self.started, self.on_change = plan, started, on_change
        quarters = {round(plan.epochs * f) for f in (0.25, 0.5, 0.75)}
        self.checks = sorted({PACE_EPOCH + 1} | {e for e in quarters if e > PACE_EPOCH + 1})
        self._mark: float | None = None
        self._validations = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now, epoch = time.monotonic(), trainer.current_epoch
        if epoch == PACE_EPOCH:
            self._mark, self._validations = now, 0
        elif epoch in self.checks and self._mark is not None:
            measured = now - self._mark
            epochs = self.plan.paced_epochs(epoch, measured, self._validations, now - self.started)
            epochs = int(trainer.strategy.broadcast(epochs, src=0))
            self._apply(trainer, pl_module, epochs, epoch, measured / (epoch - PACE_EPOCH))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._mark is not None and not trainer.sanity_checking:
            self._validations += 1

    def _apply(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        epochs: int,
        epoch: int,
        per_epoch: float,
    ) -> None:
        old = int(trainer.fit_loop.max_epochs or self.plan.epochs)
        if epochs == old:
            log.info("budget: on pace after epoch %d/%d (%.1f s per epoch)", epoch, old, per_epoch)
            return
        trainer.fit_loop.max_epochs = epochs
        total = stretch_schedule(trainer, pl_module, old, epochs)
        change = (
            f"after epoch {epoch}/{old}, {per_epoch:.1f} s per epoch: {epochs} epochs "
            f"instead of {old}"
        )
        self.plan.paced = "; ".join(filter(None, [self.plan.paced, change]))
        self.plan.steps = self.plan.steps * epochs // max(self.plan.epochs, 1)
        self.plan.epochs = epochs
        log.info("budget: %s end within the budget (%d steps)", change, total)
        if self.on_change is not None:
            self.on_change(epochs)


def stretch_schedule(trainer: L.Trainer, module: L.LightningModule, old: int, new: int) -> int:
    """Make the run's schedule span ``new`` epochs instead of ``old``: the module's
    ``total_steps``, the warm-up/cosine learning rate and AdamP's Demon decay. Returns the
    new number of optimiser steps."""
    total = max(1, round(int(getattr(module, "total_steps", 1)) * new / max(old, 1)))
    if hasattr(module, "total_steps"):
        setattr(module, "total_steps", total)  # noqa: B010 (a plain int on a Module)
    for config in trainer.lr_scheduler_configs:
        for fn in getattr(config.scheduler, "lr_lambdas", []):
            if isinstance(fn, WarmupCosine):  # goes on from the current learning rate
                fn.refit(int(getattr(config.scheduler, "last_epoch", 0)), total)
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            if group.get("total_steps"):
                group["total_steps"] = total
    return total

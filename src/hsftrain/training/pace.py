"""What a ``budget=`` plan is: the candidate networks (those the data is large enough for)
and their cost model, which of your own values it keeps (:data:`KEPT`), the plan saved as
``plan.yaml``, and :class:`BudgetPace`, which keeps a run to its budget at its own pace.

The planner times a few steps of each candidate; a whole epoch under Lightning on a machine
whose speed drifts (a shared CPU, a GPU warming up) can run 10% faster or slower than that.
After its second epoch (the first pays for compilation and warm-up), and again at a quarter,
half and three quarters of the plan, a run measures its own mean pace and re-fits the number
of epochs to the time left, stretching or shortening the learning-rate schedule so that the
cosine still ends with the run.
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import lightning as L
from omegaconf import DictConfig, OmegaConf

from hsftrain.config import compose
from hsftrain.containers import plain
from hsftrain.data.datamodule import input_multiple, patch_size
from hsftrain.files import write_text_atomic
from hsftrain.optim import WarmupCosine

log = logging.getLogger(__name__)

#: Share of the training time that validation may take.
VALIDATION_SHARE = 0.08
#: A training epoch under Lightning (logging, callbacks, checkpoints, loader start) over the
#: timed steps and validation: 36 s against 32.8 s planned in a 30-minute MSD run.
LIGHTNING_OVERHEAD = 1.1
#: The epoch (0-based) whose duration sets the run's pace: the first pays for compilation.
PACE_EPOCH = 1
#: How far a measured pace may move the plan (one stalled epoch must not cut the run short).
PACE_LIMITS = (0.5, 2.0)
#: A candidate network: (f_maps, num_levels); f_maps an int (doubled at each level) or the
#: channels of each level.
Network = tuple[int | list[int], int]

#: Keys of the plan that a value you give yourself takes the place of: the plan keeps your
#: network (and plans its epochs), batch size and patch size (``models.compile`` is only
#: planned when left at ``auto``). Every other key of the plan (``lightning.max_epochs``,
#: ``check_val_every_n_epoch``, ``max_time``) is the plan's, your value replaced with a warning.
KEPT = ("models.hparams.f_maps", "models.hparams.num_levels", "datasets.batch_size")


def user_values(cfg: DictConfig, keys: Sequence[str]) -> dict[str, Any]:
    """The ``keys`` of ``cfg`` whose value differs from the packaged defaults (given by the
    user, or by a preset), with their values."""
    defaults = compose("config")
    return {
        key: plain(OmegaConf.select(cfg, key))
        for key in keys
        if plain(OmegaConf.select(cfg, key)) != plain(OmegaConf.select(defaults, key))
    }


@dataclass
class Candidate:
    """One network tried by the planner, and what it measured."""

    #: channels of the first level (doubled at each level), or of each level
    f_maps: int | list[int]
    num_levels: int
    batch_size: int
    patch: list[int]
    s_per_step: float = float("nan")
    val_s: float = float("nan")
    steps: int = 0
    epochs: int = 0
    note: str = ""
    val_every: int = 1
    compiled: bool = False
    compile_s: float = 0.0
    #: planned seconds of each epoch in turn, for up to twice the planned time (not saved)
    epoch_s: list[float] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        tail = "+compile" if self.compiled else ""
        width = self.f_maps if isinstance(self.f_maps, int) else "-".join(map(str, self.f_maps))
        return f"f{width}/L{self.num_levels}/b{self.batch_size}{tail}"

    def fit(
        self,
        available_s: float,
        steps_per_epoch: int,
        step_s: Callable[[int], float] | None = None,
    ) -> None:
        """Set ``epochs`` and ``steps`` to what fits in ``available_s`` seconds, with
        validation every k epochs so that it takes at most :data:`VALIDATION_SHARE` of the
        time (and once more at the end, with surface metrics); a compiled candidate pays
        its compilation first. ``step_s(epoch)``: seconds per step of that epoch where
        they vary (fine-tuning thaws levels one by one), else ``s_per_step``."""
        epoch_s = steps_per_epoch * self.s_per_step
        k = max(1, math.ceil(self.val_s / max(VALIDATION_SHARE * epoch_s, 1e-9)))
        train_s = available_s - self.compile_s - 2 * self.val_s
        self.epoch_s, total = [], 0.0
        for cost in _costs(steps_per_epoch, step_s or (lambda _: self.s_per_step), self.val_s / k):
            total += cost
            if total > 2 * train_s or len(self.epoch_s) >= 100_000:
                break
            self.epoch_s.append(cost)
        self.epochs = _epochs_within(self.epoch_s, train_s)
        self.steps = self.epochs * steps_per_epoch
        self.val_every = max(min(k, self.epochs), 1)
        self.note = self.note or f"val every {k}"


def fitting_candidates(
    cfg: DictConfig, pairs: Sequence[Network], shapes: Sequence[Sequence[int]], batch: int
) -> list[Candidate]:
    """Candidates of the networks in ``pairs`` that are not too deep for their patch (the
    deepest level at least 2 voxels per axis: not e.g. 4 levels on 12-slice volumes)."""
    out = []
    for f_maps, levels in pairs:
        patch = list(patch_size(cfg.datasets.get("patch_size"), shapes, input_multiple(levels)))
        if min(p // 2 ** (levels - 1) for p in patch) >= 2:
            out.append(Candidate(f_maps, levels, batch, patch))
    return out


def too_small(cfg: DictConfig, fp: Mapping[str, Any], network: Any, ft: bool) -> str:
    """Why no network fits, and the keys that change it."""
    where = f"the data (median shape {fp['median_shape']})"
    fixes = []
    if cfg.datasets.get("patch_size") is not None:
        where = f"datasets.patch_size={plain(cfg.datasets.patch_size)}"
        fixes.append("a larger datasets.patch_size (or null: the data's median shape)")
    if network and not ft:
        fixes.insert(0, "fewer models.hparams.num_levels")
    fixes = fixes or ["larger volumes"]
    return (
        f"budget={cfg.budget}: {where} is too small for "
        f"{'the network' if network else 'every candidate network'} (its deepest level needs "
        f"at least 2 voxels per axis); give {' or '.join(fixes)}"
    )


def _costs(steps: int, step_s: Callable[[int], float], val_s: float) -> Iterator[float]:
    """Planned seconds of epoch 0, 1, ...: its steps, its share of validation, Lightning."""
    return ((steps * step_s(e) + val_s) * LIGHTNING_OVERHEAD for e in itertools.count())


def _epochs_within(costs: list[float], seconds: float) -> int:
    """How many of these epochs, in order, end within ``seconds``."""
    return sum(1 for t in itertools.accumulate(costs) if t <= seconds)


@dataclass
class Plan:
    """What ``budget=`` decided, saved as ``plan.yaml``."""

    budget_s: float
    device: str
    fingerprint: dict[str, Any]
    candidates: list[Candidate]
    chosen: str
    epochs: int
    steps: int
    check_val_every_n_epoch: int
    train_s: float
    planning_s: float
    why: str
    overrides: dict[str, Any] = field(default_factory=dict)
    #: seconds after the run started by which the epochs end (then validation and export)
    epochs_end_s: float = 0.0
    #: what the run's measured pace changed (:class:`BudgetPace`)
    paced: str = ""

    def save(self, path: Path) -> None:
        data = asdict(self)
        for c in data["candidates"]:
            c.pop("epoch_s")
        write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(data)))

    def table(self, width: int | None = None) -> str:
        """The candidates, their measurements and the choice, one line each; with a
        ``width``, a note that would make its line wider goes on a line of its own."""
        rows = [f"{'candidate':<18}{'patch':>12}{'s/step':>8}{'val s':>7}{'steps':>7}{'epochs':>7}"]
        for c in self.candidates:
            mark = "  <- chosen" if c.name == self.chosen else (f"  ({c.note})" if c.note else "")
            row = (
                f"{c.name:<18}{'x'.join(map(str, c.patch)):>12}{c.s_per_step:>8.2f}"
                f"{c.val_s:>7.1f}{c.steps:>7d}{c.epochs:>7d}"
            )
            fits = width is None or len(row) + len(mark) <= width
            rows += [row + mark] if fits or not mark else [row, f"    {mark.strip()}"]
        return "\n".join(rows)

    def show(self, budget: Any, stream: TextIO | None = None, width: int | None = None) -> None:
        """The plan on the terminal (``stream``, stderr), fitted to its width (80 columns
        when it is not a terminal), then why; in full in ``train.log``."""
        log.info(
            "budget %s: plan\n%s\n%s", budget, self.table(), self.why, extra={"file_only": True}
        )
        width = width or shutil.get_terminal_size((80, 24)).columns
        out = stream or sys.stderr
        out.write(f"budget {budget}: plan\n{self.table(width)}\n")
        out.flush()
        log.info("budget %s: %s", budget, self.why, extra={"console_only": True})

    def chosen_candidate(self) -> Candidate:
        return next(c for c in self.candidates if c.name == self.chosen)

    def paced_epochs(self, done: int, measured_s: float, validations: int, elapsed_s: float) -> int:
        """Epochs that end by :attr:`epochs_end_s` when epochs :data:`PACE_EPOCH` to
        ``done - 1`` took ``measured_s`` seconds with ``validations`` validations among them,
        and ``elapsed_s`` seconds of the run have passed: the plan's later epochs scaled by
        the measured pace (measured over planned time of the same epochs)."""
        c = self.chosen_candidate()
        if len(c.epoch_s) <= done or done <= PACE_EPOCH:
            return self.epochs
        window = c.epoch_s[PACE_EPOCH:done]
        val_share = c.val_s / c.val_every * LIGHTNING_OVERHEAD  # in each planned epoch
        planned = sum(window) + (validations * c.val_every - len(window)) * val_share
        pace = min(max(measured_s / max(planned, 1e-9), PACE_LIMITS[0]), PACE_LIMITS[1])
        left = self.epochs_end_s - elapsed_s - 2 * c.val_s * (pace - 1)
        later = [cost * pace for cost in c.epoch_s[done:]]
        return done + max(_epochs_within(later, left), 1)


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

"""Before a long run without ``budget=`` on a CPU: a line with its estimated training time
on this machine, from a few timed steps (the steps ``budget=`` plans with), and the
``budget=`` suggestion when it will take hours."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from hsftrain.data.cache import PreparedSubject
from hsftrain.data.datamodule import input_multiple, patch_size
from hsftrain.planning.timing import StepShape, time_steps
from hsftrain.training.denormals import flush_denormals
from hsftrain.training.trainer import run_precision

log = logging.getLogger(__name__)

#: Runs of fewer optimiser steps are not timed (a few seconds of timing would not pay).
MIN_STEPS = 300
#: A run estimated longer than this gets the ``budget=`` suggestion.
LONG_S = 3600.0
#: Steps timed (after two warm-up steps).
TIMED_STEPS = 2


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return (
        f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"
    )


def estimate_run(
    cfg: DictConfig,
    module: Any,
    train: Sequence[PreparedSubject],
    val: Sequence[PreparedSubject],
    num_levels: int,
    total_steps: int,
) -> float | None:
    """Time :data:`TIMED_STEPS` training steps of a copy of ``module`` and one validation,
    log the estimated training time of the run, and suggest ``budget=`` when it is over
    :data:`LONG_S`. Only for a new run on a CPU without ``budget=`` of at least
    :data:`MIN_STEPS` steps. Returns the estimate in seconds, or None when not timed."""
    on_cpu = cfg.lightning.get("accelerator") == "cpu" or not torch.cuda.is_available()
    if cfg.get("budget") or not on_cpu or total_steps < MIN_STEPS or not train:
        return None
    patch = patch_size(
        cfg.datasets.get("patch_size"), [p.shape for p in train], input_multiple(num_levels)
    )
    state = np.random.get_state()
    flush_denormals()  # as in training (run, SegmentationModule.on_fit_start)
    with torch.random.fork_rng():  # the run draws the same random numbers as untimed
        bf16 = run_precision(cfg).startswith("bf16")
        batch_size = int(cfg.datasets.batch_size)
        shape = StepShape(patch, batch_size, num_levels, cfg.get("augmentation"), bf16)
        per_step, val_s = time_steps(
            copy.deepcopy(module), train, val, shape, torch.device("cpu"), TIMED_STEPS
        )
    np.random.set_state(state)
    epochs = int(cfg.lightning.max_epochs)
    validations = epochs // max(int(cfg.lightning.get("check_val_every_n_epoch") or 1), 1)
    seconds = total_steps * per_step + validations * val_s
    log.info(
        "estimated training time on this machine: about %s (%d epochs, %d steps at %.1f s "
        "per step, %d validations of %.0f s)",
        _duration(seconds), epochs, total_steps, per_step, validations, val_s,
    )  # fmt: skip
    if seconds > LONG_S:
        log.warning(
            "this run takes hours on this CPU: add budget=<time> (e.g. budget=30m or "
            "budget=2h) to plan a network and a number of epochs that end within that time "
            "(docs/user_guide.md, Training with a time budget)",
        )
    return seconds

"""``hsftrain plan``: planning as a step of its own. The data is discovered, split and
prepared as ``hsftrain train`` would, the candidate networks are timed for ``budget=`` on
this machine (:func:`~hsftrain.training.budget.make_plan`), and the plan is written to
``plan_path`` (``plan.yaml`` in the current folder by default) without training;
``hsftrain train plan=<plan.yaml>`` then trains from it. An existing file is never
replaced: the command refuses before planning.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from hsftrain.core.errors import ConfigError
from hsftrain.data.datamodule import prepare_split
from hsftrain.data.discovery import discover
from hsftrain.training.budget import make_plan
from hsftrain.training.build import module_for, run_classes
from hsftrain.training.denormals import flush_denormals
from hsftrain.training.record import configured_split
from hsftrain.training.validate import validate_training

log = logging.getLogger(__name__)


def plan(cfg: DictConfig) -> Path:
    """Plan a training run for ``budget=`` and write the plan; returns its path.

    Raises:
        ConfigError: no ``budget=``, ``plan=`` given, or ``plan_path`` already exists or
            lies in no folder; what planning raises.
    """
    if not cfg.get("budget"):
        raise ConfigError(
            "hsftrain plan needs budget=<time> (e.g. budget=30m): the time the training run "
            "may take"
        )
    if cfg.get("plan"):
        raise ConfigError(
            f"plan={cfg.plan}: hsftrain plan makes a plan; give plan_path= for where to write "
            "it, and plan= to hsftrain train"
        )
    path = Path(str(cfg.get("plan_path") or "plan.yaml")).expanduser()
    if path.exists():
        raise ConfigError(
            f"plan_path={path} already exists: give another plan_path= or remove it first"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"plan_path={path}: no folder {path.parent}; create it first")
    validate_training(cfg)
    flush_denormals()  # before torch starts its threads (as train does)
    started = time.monotonic()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    found = discover(cfg.datasets, bool(cfg.models.get("use_forgiving_loss", True)))
    classes = run_classes(cfg, found, None)
    train_set, val_set = prepare_split(cfg, found, configured_split(cfg, found))
    _, made = make_plan(
        cfg, train_set, val_set, lambda c: module_for(c, found, 1000), started, None, classes
    )
    made.save(path)
    log.info(
        "plan written to %s: train with hsftrain train plan=%s and the same data overrides "
        "(without budget=)", path, path,
    )  # fmt: skip
    return path

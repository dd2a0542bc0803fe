"""``hsftrain plan``: planning as a step of its own. The data is discovered, split and
prepared as ``hsftrain train`` would, the candidate networks are timed for ``budget=`` on
this machine (:func:`~hsftrain.training.budget.make_plan`), and the plan is written to
``plan_path`` (``plan.yaml`` in the current folder by default) without training;
``hsftrain train plan=<plan.yaml>`` then trains from it (:func:`from_file`, chosen by
:func:`planned_run`). An existing file is never replaced: the command refuses before
planning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from hsftrain.core.errors import ConfigError
from hsftrain.data.cache import PreparedSubject
from hsftrain.data.datamodule import prepare_split
from hsftrain.data.discovery import discover
from hsftrain.data.fingerprint import fingerprint
from hsftrain.planning.candidates import network_of, recipe
from hsftrain.planning.plan import Plan, applied, warn_replaced
from hsftrain.planning.settings import planning_settings
from hsftrain.training.budget import make_plan
from hsftrain.training.build import module_for, run_classes
from hsftrain.training.denormals import flush_denormals
from hsftrain.training.record import configured_split
from hsftrain.training.settings import steps_per_epoch
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


def planned_run(
    cfg: DictConfig,
    train: Sequence[PreparedSubject],
    val: Sequence[PreparedSubject],
    build: Callable[[DictConfig], Any],
    started: float,
    pretrained: Mapping[str, Any] | None = None,
    classes: Sequence[str] = (),
) -> tuple[DictConfig, Plan]:
    """The run's config with its plan applied: the saved plan of ``plan=``
    (:func:`from_file`), else one made now for ``budget=`` (:func:`make_plan`);
    ``pretrained``: the hparams of the pretrained network (fine-tuning).

    Raises:
        ConfigError: both ``budget=`` and ``plan=``, or what the two functions raise.
    """
    if cfg.get("plan"):
        if cfg.get("budget"):
            raise ConfigError(
                f"budget={cfg.budget} and plan={cfg.plan}: give one (plan= trains from a "
                "saved plan, budget= plans now)"
            )
        return from_file(cfg, Path(str(cfg.plan)).expanduser(), train, classes)
    network = network_of(pretrained) if pretrained is not None else None
    return make_plan(cfg, train, val, build, started, network, classes)


def from_file(
    cfg: DictConfig, path: Path, train: Sequence[PreparedSubject], classes: Sequence[str] = ()
) -> tuple[DictConfig, Plan]:
    """``cfg`` with the plan saved in ``path`` applied as ``budget=`` applies its own: the
    recipe values only where yours are left at their default, every other value of the plan
    in place of yours (a warning each). Plan made on other data: a warning.

    Raises:
        ConfigError: not a plan file, or a plan for other classes.
    """
    plan = Plan.load(path)
    where = f"plan={path}"
    plan.check_data(where, fingerprint(train), classes)
    settings = planning_settings(cfg)
    at_default = recipe(cfg, settings)
    overrides = {
        k: v for k, v in plan.overrides.items() if k not in settings.recipe or k in at_default
    }
    warn_replaced(cfg, {k: v for k, v in overrides.items() if k not in settings.recipe}, where)
    planned = applied(cfg, overrides)
    plan.restore_pace(steps_per_epoch(len(train), int(planned.datasets.batch_size)))
    log.info(
        "%s: %s for %d epochs (%d steps), planned for a %.0f s budget on %s; no timing",
        where, plan.chosen, plan.epochs, plan.steps, plan.budget_s, plan.device,
    )  # fmt: skip
    return planned, plan

"""``budget=`` and ``plan=``: the best model that fits the time you have, planned on this
machine.

Before training, :func:`make_plan` fingerprints the data (median shape, spacing, intensity),
times a few training steps of each candidate network (``planning.candidates``) on the real
prepared data with augmentation on (this machine, this device), one line each as it starts,
and hands the timings to the planner (:mod:`hsftrain.planning.planner`), which picks the
largest candidate that still gets enough optimiser steps (the next larger ones, timed a
second time, may take its place: other load only ever slows a step); the number of epochs is
then set so that training, validation and export end inside the budget, and the
learning-rate schedule spans exactly those steps. The plan (candidates, measured seconds per
step, the choice and why) is printed and saved as ``plan.yaml`` in the run directory.
A network or batch size you set yourself is kept (only the epochs are planned); the epochs,
validation interval and time cap you set are replaced, with a warning for each
(:data:`~hsftrain.planning.candidates.KEPT`).
``plan=<plan.yaml>`` (made by ``hsftrain plan``) applies a saved plan instead, without timing
(:func:`from_file`). After its second epoch (and at 25/50/75% of the plan) the run re-fits
its epochs to its own measured pace (:class:`~hsftrain.training.pace.BudgetPace`). Lightning's
``max_time`` is set as a safety net: a run about to overrun stops at the budget with its best
checkpoint, and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from hsftrain.config.compose import ConfigError
from hsftrain.data.cache import PreparedSubject
from hsftrain.data.fingerprint import fingerprint
from hsftrain.planning.candidates import (
    KEPT,
    Candidate,
    candidates_for,
    network_of,
    recipe,
    too_small,
    user_network,
    user_values,
)
from hsftrain.planning.plan import Plan, applied, warn_replaced
from hsftrain.planning.planner import close_call, decide, fit_all, select, with_compiled
from hsftrain.planning.settings import Network, PlanningSettings, planning_settings
from hsftrain.planning.timing import StepShape, time_steps
from hsftrain.training.denormals import flush_denormals
from hsftrain.training.distributed import compile_enabled
from hsftrain.training.finetuning import thawing_step_s
from hsftrain.training.settings import steps_per_epoch
from hsftrain.training.trainer import run_precision
from hsftrain.training.validate import parse_budget

log = logging.getLogger(__name__)


def plans_network(cfg: DictConfig) -> bool:
    """Whether ``budget=`` or ``plan=`` chooses the network of a run from scratch (none
    given), and with it a depth that fits the data."""
    return bool(cfg.get("budget") or cfg.get("plan")) and user_network(cfg) is None


def _device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.lightning.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


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
    limit = planned.lightning.get("limit_train_batches")
    plan.restore_pace(steps_per_epoch(len(train), int(planned.datasets.batch_size), limit))
    log.info(
        "%s: %s for %d epochs (%d steps), planned for a %.0f s budget on %s; no timing",
        where, plan.chosen, plan.epochs, plan.steps, plan.budget_s, plan.device,
    )  # fmt: skip
    return planned, plan


def make_plan(
    cfg: DictConfig,
    train: Sequence[PreparedSubject],
    val: Sequence[PreparedSubject],
    build: Callable[[DictConfig], Any],
    started: float,
    network: Network | None = None,
    classes: Sequence[str] = (),
) -> tuple[DictConfig, Plan]:
    """Plan a run that ends within ``cfg.budget``.

    Args:
        train, val: the prepared subjects of the split.
        build: makes the LightningModule for a config (the run's own constructor).
        started: ``time.monotonic()`` when the run started (planning time counts).
        network: ``(f_maps, num_levels)`` of the pretrained network (fine-tuning); only the
            number of steps is then planned, as for a network set in ``models.hparams``.
        classes: the run's class names, recorded in the plan.

    Returns:
        The config with the plan applied (``models.hparams``, ``datasets.batch_size`` and
        ``patch_size``, ``lightning.max_epochs``, ``check_val_every_n_epoch``,
        ``max_time``) and the plan.

    Raises:
        ConfigError: a budget too short for even the smallest candidate, or data (a
            ``datasets.patch_size``) too small for any network of 2 levels.
    """
    settings = planning_settings(cfg)
    budget = parse_budget(cfg.budget)
    reserve = settings.reserve_s(budget)
    finetune = network is not None
    extra = recipe(cfg, settings) if not finetune else {}
    kept = {} if finetune else user_values(cfg, KEPT)
    if not finetune and (network := user_network(cfg)) is not None:
        log.info(
            "budget=%s: the network you set (models.hparams.f_maps=%s, num_levels=%d) is kept; "
            "only its epochs are planned", cfg.budget, network[0], network[1],
        )  # fmt: skip
    device = _device(cfg)
    fp = fingerprint(train)
    cuda = device.type == "cuda"
    bf16 = run_precision(cfg).startswith("bf16")
    own_batch = finetune or "datasets.batch_size" in kept
    batch = int(cfg.datasets.batch_size) if own_batch else settings.batch(cuda)
    pairs = (network,) if network else settings.networks(cuda)
    shapes = [s.shape for s in train]
    candidates = candidates_for(cfg, pairs, shapes, batch, fp["median_shape"], not network)
    if not candidates:
        raise ConfigError(too_small(cfg, fp, network, finetune))
    if min(c.num_levels for c in candidates) < 3:  # no decoder level to supervise
        extra.pop("models.hparams.deep_supervision", None)
    cfg = _with_recipe(cfg, extra)
    epoch_steps = steps_per_epoch(len(train), batch, cfg.lightning.get("limit_train_batches"))
    timing_limit = settings.timing_share * budget
    flush_denormals()  # as in training (run, SegmentationModule.on_fit_start)

    def time_candidate(c: Candidate, subjects: Sequence[PreparedSubject], n: int) -> Any:
        module = build(_with(cfg, c))
        log.info(
            "budget: timing %s f_maps %s, %d levels, batch %d, patch %s: %d steps and a "
            "validation pass", cfg.models.get("name", "the network"), c.f_maps, c.num_levels,
            c.batch_size, "x".join(map(str, c.patch)), n,
        )  # fmt: skip
        shape = StepShape(c.patch, c.batch_size, c.num_levels, cfg.get("augmentation"), bf16)
        return module, time_steps(module, train, subjects, shape, device, n)

    module = None
    steps = settings.timed_steps(cuda, budget)
    for c in candidates:
        if time.monotonic() - started > timing_limit:
            c.note = "not timed: planning time used up"
            continue
        module = None  # the previous candidate's, freed before the next is built
        module, (c.s_per_step, c.val_s) = time_candidate(c, val, steps)
    thawing = None
    if finetune and module is not None:  # fine-tuning: the one network, timed
        net = candidates[0]
        thawing = thawing_step_s(
            module, cfg.finetuning, net.s_per_step, started + timing_limit,
            lambda m: _timed(m, net, train, val[:1], cfg, device, settings.thawing_steps, bf16),
        )  # fmt: skip
    del module

    def refit() -> tuple[Candidate, str]:
        fit_all(candidates, budget - (time.monotonic() - started) - reserve, epoch_steps, thawing)
        return select(candidates, settings, cfg.budget, epoch_steps)

    chosen, why = refit()
    # Something else running on the machine while a larger network was timed makes it look
    # slower than it is (one busy core of two doubled a step's time): the next larger
    # networks get a second timing, the faster one kept, while one of them becomes the choice.
    for c in candidates[candidates.index(chosen) + 1 :]:
        if not close_call(chosen, c, settings) or time.monotonic() - started > timing_limit:
            break
        module, again = time_candidate(c, val, steps)
        del module
        c.s_per_step, c.val_s = min(c.s_per_step, again[0]), min(c.val_s, again[1])
        c.note = "timed twice, the faster kept"
        chosen, why = refit()
        if chosen is not c:
            break
    mode = _compile_mode(cfg, device, budget, settings)
    if not finetune and mode != "never":
        compiled = _compile_trial(cfg, chosen, train, val, build, device, bf16)
        candidates.append(compiled)
        left = budget - (time.monotonic() - started) - reserve
        chosen, why = with_compiled(
            chosen, compiled, left, epoch_steps, why, settings, mode == "always"
        )
    plan = decide(
        chosen, why, candidates, fp, budget, time.monotonic() - started, settings,
        device=device, compile=mode != "never", network=network, classes=classes,
        planning_s=time.monotonic() - started,
    )  # fmt: skip
    warn_replaced(cfg, plan.overrides, f"budget={cfg.budget}")
    plan.overrides.update(extra)  # recorded in plan.yaml with the plan's own choices
    planned = applied(cfg, plan.overrides)
    plan.show(cfg.budget)
    return planned, plan


def _with_recipe(cfg: DictConfig, extra: Mapping[str, Any]) -> DictConfig:
    """``cfg`` with the recipe values ``extra`` set, one line each."""
    if not extra:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in extra.items():
            log.info(
                "budget: %s %s (default) -> %s (budget recipe; set it to keep yours)",
                key, OmegaConf.select(cfg, key), value,
            )  # fmt: skip
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def _timed(
    module: Any,
    c: Candidate,
    train: Sequence[PreparedSubject],
    val: Sequence[PreparedSubject],
    cfg: DictConfig,
    device: torch.device,
    steps: int,
    bf16: bool,
) -> float:
    """Seconds per training step of ``module`` as candidate ``c``."""
    shape = StepShape(c.patch, c.batch_size, c.num_levels, cfg.get("augmentation"), bf16)
    return time_steps(module, train, val, shape, device, steps)[0]


def _compile_mode(
    cfg: DictConfig, device: torch.device, budget: float, settings: PlanningSettings | None = None
) -> str:
    """``always``: the run compiles anyway (``models.compile: true``, or ``auto`` on a GPU),
    so the plan times the chosen network compiled; ``if_faster``: a CPU with ``auto`` and a
    budget of at least ``planning.compile.min_budget_s``, which the plan adopts only when it
    gets more steps; ``never``: otherwise."""
    settings = settings or planning_settings(cfg)
    setting = cfg.models.get("compile", "auto")
    if compile_enabled(setting, device.type):
        return "always"
    cpu_auto = device.type == "cpu" and str(setting).lower() == "auto"
    return "if_faster" if cpu_auto and budget >= settings.compile_min_budget_s else "never"


def _compile_trial(
    cfg: DictConfig,
    chosen: Candidate,
    train: Sequence[PreparedSubject],
    val: Sequence[PreparedSubject],
    build: Callable[[DictConfig], Any],
    device: torch.device,
    bf16: bool,
) -> Candidate:
    """The chosen network timed through ``torch.compile``; ``compile_s`` is what the trial
    took beyond its timed steps (the compilation, which the run pays again). A compiler
    that fails (no C++ toolchain, an unsupported platform) leaves the step time unmeasured
    (NaN), logged, and the run trains eagerly."""
    trial = _with(cfg, chosen)
    trial.models.compile = True
    c = Candidate(chosen.f_maps, chosen.num_levels, chosen.batch_size, chosen.patch)
    c.compiled, c.val_s = True, chosen.val_s
    steps = planning_settings(cfg).compile_steps
    log.info("budget: timing %s compiled: %d steps after its compilation", chosen.name, steps)
    start = time.monotonic()
    try:
        module = build(trial)
        c.s_per_step = _timed(module, c, train, val[:1], cfg, device, steps, bf16)
    except Exception as error:  # noqa: BLE001 - any compiler failure means: train eagerly
        log.warning("budget: torch.compile failed on this machine, training eagerly (%s)", error)
        c.note = "compile failed"
        return c
    c.compile_s = time.monotonic() - start - steps * c.s_per_step
    return c


def _with(cfg: DictConfig, c: Candidate) -> DictConfig:
    trial = cfg.copy()
    with open_dict(trial):
        trial.models.hparams.f_maps = c.f_maps
        trial.models.hparams.num_levels = c.num_levels
        trial.models.compile = False
    return trial

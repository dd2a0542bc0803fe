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
(:func:`~hsftrain.training.plan.from_file`). After its second epoch (and at 25/50/75% of the plan) the run re-fits
its epochs to its own measured pace (:class:`~hsftrain.training.pace.BudgetPace`). Lightning's
``max_time`` is set as a safety net: a run about to overrun stops at the budget with its best
checkpoint, and says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    recipe,
    too_small,
    user_network,
    user_values,
)
from hsftrain.planning.candidates import network_of as network_of  # re-exported
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


def make_plan(
    cfg: DictConfig,
    train: Sequence[PreparedSubject],
    val: Sequence[PreparedSubject],
    build: Callable[[DictConfig], Any],
    started: float,
    network: Network | None = None,
    classes: Sequence[str] = (),
) -> tuple[DictConfig, Plan]:
    """Plan a run that ends within ``cfg.budget``, in named steps: fingerprint the data and
    list the candidates, time them, pick one, time it compiled, apply the plan.

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
    p, candidates = _fingerprint(cfg, _Data(train, val, build, classes), started, network)
    flush_denormals()  # as in training (run, SegmentationModule.on_fit_start)
    thawing = _time_candidates(p, candidates)
    chosen, why = _pick(p, candidates, thawing)
    chosen, why, compile = _compile_step(p, candidates, chosen, why)
    return _apply(p, candidates, chosen, why, compile)


@dataclass(frozen=True)
class _Data:
    """What a plan is timed on: the split's prepared subjects, the run's module constructor
    and its class names."""

    train: Sequence[PreparedSubject]
    val: Sequence[PreparedSubject]
    build: Callable[[DictConfig], Any]
    classes: Sequence[str]


@dataclass(frozen=True)
class _Planning:
    """A plan in the making: what each step of :func:`make_plan` reads."""

    cfg: DictConfig  # the run's, budget recipe applied
    data: _Data
    settings: PlanningSettings
    device: torch.device
    bf16: bool  # the run trains in bf16 autocast
    budget: float  # seconds
    started: float  # time.monotonic() when the run started
    network: Network | None  # pretrained or set in models.hparams; None: candidates
    finetune: bool  # network is the pretrained one
    extra: dict[str, Any]  # the budget recipe values set
    fp: dict[str, Any]  # the data's fingerprint
    epoch_steps: int  # of a whole epoch: lightning.limit_train_batches leaves plans alone

    def time(
        self, module: Any, c: Candidate, val: Sequence[PreparedSubject], steps: int
    ) -> tuple[float, float]:
        """Seconds per training step of ``module`` as candidate ``c``, and for one
        validation pass over ``val``."""
        shape = _shape(c, self.cfg, self.bf16)
        return time_steps(module, self.data.train, val, shape, self.device, steps)

    @property
    def deadline(self) -> float:
        """``time.monotonic()`` after which nothing more is timed."""
        return self.started + self.settings.timing_share * self.budget

    def left(self) -> float:
        """Seconds of the budget left for training, validation and export."""
        elapsed = time.monotonic() - self.started
        return self.budget - elapsed - self.settings.reserve_s(self.budget)


def _fingerprint(
    cfg: DictConfig, data: _Data, started: float, network: Network | None
) -> tuple[_Planning, list[Candidate]]:
    """The data's fingerprint, the budget recipe set (one line each) and the candidate
    networks that fit the data, smallest first.

    Raises:
        ConfigError: no candidate fits the data.
    """
    settings = planning_settings(cfg)
    budget = parse_budget(cfg.budget)
    finetune = network is not None
    extra = recipe(cfg, settings) if not finetune else {}
    kept = {} if finetune else user_values(cfg, KEPT)
    if not finetune and (network := user_network(cfg)) is not None:
        log.info(
            "budget=%s: the network you set (models.hparams.f_maps=%s, num_levels=%d) is kept; "
            "only its epochs are planned", cfg.budget, network[0], network[1],
        )  # fmt: skip
    device = _device(cfg)
    fp = fingerprint(data.train)
    cuda = device.type == "cuda"
    bf16 = run_precision(cfg).startswith("bf16")
    own_batch = finetune or "datasets.batch_size" in kept
    batch = int(cfg.datasets.batch_size) if own_batch else settings.batch(cuda)
    pairs = (network,) if network else settings.networks(cuda)
    shapes = [s.shape for s in data.train]
    candidates = candidates_for(cfg, pairs, shapes, batch, fp["median_shape"], not network)
    if not candidates:
        raise ConfigError(too_small(cfg, fp, network, finetune))
    if min(c.num_levels for c in candidates) < 3:  # no decoder level to supervise
        extra.pop("models.hparams.deep_supervision", None)
    cfg = _with_recipe(cfg, extra)
    epoch_steps = steps_per_epoch(len(data.train), batch)  # whole epochs, as planned
    p = _Planning(
        cfg, data, settings, device, bf16, budget, started, network, finetune, extra, fp,
        epoch_steps,
    )  # fmt: skip
    return p, candidates


def _time_candidate(p: _Planning, c: Candidate) -> tuple[Any, tuple[float, float]]:
    """A module of candidate ``c``, and its seconds per step and per validation pass."""
    module = p.data.build(_with(p.cfg, c))
    steps = p.settings.timed_steps(p.device.type == "cuda", p.budget)
    log.info(
        "budget: timing %s f_maps %s, %d levels, batch %d, patch %s: %d steps and a "
        "validation pass", p.cfg.models.get("name", "the network"), c.f_maps, c.num_levels,
        c.batch_size, "x".join(map(str, c.patch)), steps,
    )  # fmt: skip
    return module, p.time(module, c, p.data.val, steps)


def _time_candidates(p: _Planning, candidates: list[Candidate]) -> Callable[[int], float] | None:
    """Time each candidate while planning time is left (the others noted as not timed);
    fine-tuning: the seconds per step of each thawing stage too (:func:`thawing_step_s`)."""
    module = None
    for c in candidates:
        if time.monotonic() > p.deadline:
            c.note = "not timed: planning time used up"
            continue
        module = None  # the previous candidate's, freed before the next is built
        module, (c.s_per_step, c.val_s) = _time_candidate(p, c)
    if not p.finetune or module is None:
        return None
    net = candidates[0]  # fine-tuning: the one network, timed
    return thawing_step_s(
        module, p.cfg.finetuning, net.s_per_step, p.deadline,
        lambda m: p.time(m, net, p.data.val[:1], p.settings.thawing_steps)[0],
    )  # fmt: skip


def _pick(
    p: _Planning, candidates: list[Candidate], thawing: Callable[[int], float] | None
) -> tuple[Candidate, str]:
    """The candidate that fits the time left best, and why (:func:`select`).

    Something else running on the machine while a larger network was timed makes it look
    slower than it is (one busy core of two doubled a step's time): the next larger
    networks get a second timing, the faster one kept, while one of them becomes the choice.
    """

    def refit() -> tuple[Candidate, str]:
        fit_all(candidates, p.left(), p.epoch_steps, thawing)
        return select(candidates, p.settings, p.cfg.budget, p.epoch_steps)

    chosen, why = refit()
    for c in candidates[candidates.index(chosen) + 1 :]:
        if not close_call(chosen, c, p.settings) or time.monotonic() > p.deadline:
            break
        module, again = _time_candidate(p, c)
        del module
        c.s_per_step, c.val_s = min(c.s_per_step, again[0]), min(c.val_s, again[1])
        c.note = "timed twice, the faster kept"
        chosen, why = refit()
        if chosen is not c:
            break
    return chosen, why


def _compile_step(
    p: _Planning, candidates: list[Candidate], chosen: Candidate, why: str
) -> tuple[Candidate, str, bool]:
    """The choice, timed compiled too (listed with the candidates) where the run compiles
    or compiling may pay (:func:`_compile_mode`); and whether the plan compiles."""
    mode = _compile_mode(p.cfg, p.device, p.budget, p.settings)
    if not p.finetune and mode != "never":
        d = p.data
        compiled = _compile_trial(p.cfg, chosen, d.train, d.val, d.build, p.device, p.bf16)
        candidates.append(compiled)
        always = mode == "always"
        chosen, why = with_compiled(
            chosen, compiled, p.left(), p.epoch_steps, why, p.settings, always
        )
    return chosen, why, mode != "never"


def _apply(
    p: _Planning, candidates: list[Candidate], chosen: Candidate, why: str, compile: bool
) -> tuple[DictConfig, Plan]:
    """The plan (:func:`decide`), shown, and the run's config with it and the budget
    recipe applied (a warning for each value of yours it replaces)."""
    plan = decide(
        chosen, why, candidates, p.fp, p.budget, time.monotonic() - p.started, p.settings,
        device=p.device, compile=compile, network=p.network, classes=p.data.classes,
        planning_s=time.monotonic() - p.started,
    )  # fmt: skip
    warn_replaced(p.cfg, plan.overrides, f"budget={p.cfg.budget}")
    plan.overrides.update(p.extra)  # recorded in plan.yaml with the plan's own choices
    planned = applied(p.cfg, plan.overrides)
    plan.show(p.cfg.budget)
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
        c.s_per_step = time_steps(module, train, val[:1], _shape(c, cfg, bf16), device, steps)[0]
    except Exception as error:  # noqa: BLE001 - any compiler failure means: train eagerly
        log.warning("budget: torch.compile failed on this machine, training eagerly (%s)", error)
        c.note = "compile failed"
        return c
    c.compile_s = time.monotonic() - start - steps * c.s_per_step
    return c


def _shape(c: Candidate, cfg: DictConfig, bf16: bool) -> StepShape:
    """A training step of candidate ``c`` as the run (``cfg``) trains."""
    return StepShape(c.patch, c.batch_size, c.num_levels, cfg.get("augmentation"), bf16)


def _with(cfg: DictConfig, c: Candidate) -> DictConfig:
    trial = cfg.copy()
    with open_dict(trial):
        trial.models.hparams.f_maps = c.f_maps
        trial.models.hparams.num_levels = c.num_levels
        trial.models.compile = False
    return trial

"""``budget=``: the best model that fits the time you have, planned on this machine.

Before training, :func:`make_plan` fingerprints the data (median shape, spacing, intensity),
times a few training steps of each candidate network on the real prepared data with
augmentation on (this machine, this device), estimates what validation and export will
cost, and picks the largest candidate that still gets enough optimiser steps (the next
larger ones, timed a second time, may take its place: other load only ever slows a step);
the number of epochs is then set so that training, validation and export end inside the
budget, and the learning-rate schedule spans exactly those steps. The plan (candidates, measured
seconds per step, the choice and why) is printed and saved as ``plan.yaml`` in the run directory.
A network or batch size you set yourself is kept (only the epochs are planned); the epochs,
validation interval and time cap you set are replaced, with a warning for each
(:data:`~hsftrain.training.plan.KEPT`).
After its second epoch (and at 25/50/75% of the plan) the run re-fits its epochs to its
own measured pace (:class:`~hsftrain.training.plan.BudgetPace`). Lightning's ``max_time``
is set as a safety net: a run about to overrun stops at the budget with its best
checkpoint, and says so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from hsftrain.config import ConfigError, defaults_like
from hsftrain.containers import plain
from hsftrain.data.cache import PreparedSubject
from hsftrain.data.fingerprint import fingerprint
from hsftrain.models.blocks import feature_sizes
from hsftrain.training.distributed import compile_enabled
from hsftrain.training.finetuning import thawing_step_s
from hsftrain.training.plan import (
    KEPT,
    Candidate,
    Network,
    Plan,
    fitting_candidates,
    too_small,
    user_values,
)
from hsftrain.training.timing import time_steps
from hsftrain.training.trainer import run_precision
from hsftrain.training.validate import parse_budget

log = logging.getLogger(__name__)

#: Optimiser steps a candidate must afford to be chosen over a smaller one (at batch 2;
#: scaled by the batch size). Set from the MSD measurements in docs/benchmarks.md: the
#: demo-size network (f_maps 8, 3 levels) reaches its plateau after about 1500 steps.
MIN_SAMPLES = 3000
#: Seconds kept for start-up, the last checkpoint and the ONNX export (at most; a short budget
#: keeps 5 s plus 5% of it: a 2-minute run's network exports in about 2 s).
FIXED_RESERVE_S = 25.0
#: What ``budget=`` sets on top of the plan when training from scratch, for each key left at
#: its default (a value you give yourself is kept): the recipe measured on MSD
#: (docs/benchmarks.md, "A stronger recipe").
RECIPE: dict[str, Any] = {
    "models.lr": 5e-3,
    # Dice-balanced Tversky (hsf_train's 0.3 / 0.7 favours recall)
    "models.loss.alpha": 0.5,
    "models.loss.beta": 0.5,
    # +0.004 mean Dice on the tuning cases in a 30-minute run, for ~9% fewer steps
    "models.hparams.deep_supervision": True,
}
#: Budgets from which ``budget=`` on a CPU also times the chosen network through
#: ``torch.compile`` (compiling takes about a minute on a 2-core CPU, once in the plan and once
#: in the run; it made an f_maps 24 / 4-level step 1.4x faster, docs/benchmarks.md).
COMPILE_MIN_BUDGET_S = 1200.0
#: Compiled training is chosen when it gets at least this many more steps than eager.
COMPILE_GAIN = 1.1
#: Candidate networks, smallest first.
CPU_CANDIDATES: tuple[Network, ...] = ((8, 3), (12, 3), (16, 3), (16, 4), (24, 4))
GPU_CANDIDATES: tuple[Network, ...] = ((16, 4), (24, 4), (32, 4), (48, 4), (64, 4))


def user_network(cfg: DictConfig) -> Network | None:
    """``(f_maps, num_levels)`` when ``models.hparams.f_maps`` or ``num_levels`` is not the
    default: ``budget=`` then plans the epochs of that network; None: the plan chooses."""
    if not user_values(cfg, KEPT[:2]):
        return None
    return network_of(plain(cfg.models.hparams))


def plans_network(cfg: DictConfig) -> bool:
    """Whether ``budget=`` chooses the network of a run from scratch (none given), and with
    it a depth that fits the data."""
    return bool(cfg.get("budget")) and user_network(cfg) is None


def network_of(hparams: Mapping[str, Any]) -> Network:
    """``(f_maps, num_levels)`` of a network's hparams (a pretrained one's, for fine-tuning);
    an ``f_maps`` list gives the channels of each level, and so their number."""
    f_maps = hparams.get("f_maps", 64)
    sizes = feature_sizes(f_maps, int(hparams.get("num_levels", 4)))  # what the network builds
    return (f_maps if isinstance(f_maps, int) else sizes), len(sizes)


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
) -> tuple[DictConfig, Plan]:
    """Plan a run that ends within ``cfg.budget``.

    Args:
        train, val: the prepared subjects of the split.
        build: makes the LightningModule for a config (the run's own constructor).
        started: ``time.monotonic()`` when the run started (planning time counts).
        network: ``(f_maps, num_levels)`` of the pretrained network (fine-tuning); only the
            number of steps is then planned, as for a network set in ``models.hparams``.

    Returns:
        The config with the plan applied (``models.hparams``, ``datasets.batch_size`` and
        ``patch_size``, ``lightning.max_epochs``, ``check_val_every_n_epoch``,
        ``max_time``) and the plan.

    Raises:
        ConfigError: a budget too short for even the smallest candidate, or data (a
            ``datasets.patch_size``) too small for any network of 2 levels.
    """
    budget = parse_budget(cfg.budget)
    reserve = min(FIXED_RESERVE_S, 5.0 + 0.05 * budget)
    finetune = network is not None
    extra = recipe(cfg) if not finetune else {}
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
    batch = int(cfg.datasets.batch_size) if own_batch else (8 if cuda else 2)
    pairs: Sequence[Network] = (
        (network,) if network else (GPU_CANDIDATES if cuda else CPU_CANDIDATES)
    )
    candidates = fitting_candidates(cfg, pairs, [s.shape for s in train], batch)
    if not candidates and not network:  # tiny volumes: the same widths with fewer levels
        for depth in range(max(levels for _, levels in pairs) - 1, 1, -1):
            shallower = dict.fromkeys((f, min(n, depth)) for f, n in pairs if isinstance(f, int))
            candidates = fitting_candidates(cfg, list(shallower), [s.shape for s in train], batch)
            if candidates:
                log.info(
                    "budget: the data (median shape %s) is too small for the candidates' "
                    "depth: planning them with at most %d levels", fp["median_shape"], depth,
                )  # fmt: skip
                break
    if not candidates:
        raise ConfigError(too_small(cfg, fp, network, finetune))
    if min(c.num_levels for c in candidates) < 3:  # no decoder level to supervise
        extra.pop("models.hparams.deep_supervision", None)
    if extra:
        cfg = cfg.copy()
        with open_dict(cfg):
            for key, value in extra.items():
                log.info(
                    "budget: %s %s (default) -> %s (budget recipe; set it to keep yours)",
                    key, OmegaConf.select(cfg, key), value,
                )  # fmt: skip
                OmegaConf.update(cfg, key, value, force_add=True)
    steps_per_epoch = max(len(train) // batch, 1)  # full batches only (drop_last)
    timing_limit = 0.08 * budget

    def time_candidate(
        module: Any, c: Candidate, subjects: Sequence[PreparedSubject], steps: int
    ) -> tuple[float, float]:
        return time_steps(
            module, train, subjects, c.patch, c.batch_size, c.num_levels,
            cfg.get("augmentation"), device, steps, bf16,
        )  # fmt: skip

    module = None
    steps = 10 if cuda else min(4 + int(budget // 300), 10)  # more steps: less noise
    for c in candidates:
        if time.monotonic() - started > timing_limit:
            c.note = "not timed: planning time used up"
            continue
        module = None  # the previous candidate's, freed before the next is built
        module = build(_with(cfg, c))
        c.s_per_step, c.val_s = time_candidate(module, c, val, steps)
    thawing = None
    if finetune and module is not None:  # fine-tuning: the one network, timed
        net = candidates[0]
        thawing = thawing_step_s(
            module, cfg.finetuning, net.s_per_step, started + timing_limit,
            lambda m: time_candidate(m, net, val[:1], 4)[0],
        )  # fmt: skip
    del module

    def fit_all() -> None:
        available = budget - (time.monotonic() - started) - reserve
        for c in candidates:
            if math.isfinite(c.s_per_step):
                c.fit(available, steps_per_epoch, thawing)

    fit_all()
    chosen, why = _select(candidates, cfg.budget, steps_per_epoch)
    # Something else running on the machine while a larger network was timed makes it look
    # slower than it is (one busy core of two doubled a step's time): the next larger
    # networks get a second timing, the faster one kept, while one of them becomes the choice.
    for c in candidates[candidates.index(chosen) + 1 :]:
        if (
            chosen.steps * chosen.batch_size < MIN_SAMPLES  # none qualifies: not a close call
            or not math.isfinite(c.s_per_step)
            or time.monotonic() - started > timing_limit
        ):
            break
        module = build(_with(cfg, c))
        again = time_candidate(module, c, val, steps)
        del module
        c.s_per_step, c.val_s = min(c.s_per_step, again[0]), min(c.val_s, again[1])
        c.note = "timed twice, the faster kept"
        fit_all()
        chosen, why = _select(candidates, cfg.budget, steps_per_epoch)
        if chosen is not c:
            break
    mode = _compile_mode(cfg, device, budget)
    if not finetune and mode != "never":
        compiled = _compile_trial(cfg, chosen, train, val, build, device, bf16)
        candidates.append(compiled)
        # the trial's own time is spent whichever way the choice goes: both plans fit the rest
        left = budget - (time.monotonic() - started) - reserve
        chosen.fit(left, steps_per_epoch)
        why += f" ({chosen.steps} steps after the compile trial)"
        if math.isfinite(compiled.s_per_step):
            compiled.fit(left, steps_per_epoch)
            if mode == "always" or compiled.steps >= COMPILE_GAIN * chosen.steps:
                why += (
                    f"; compiled: {compiled.s_per_step:.2f} s/step instead of "
                    f"{chosen.s_per_step:.2f}, {compiled.steps} steps after ~"
                    f"{compiled.compile_s:.0f} s of compilation"
                )
                chosen = compiled
            else:
                compiled.note = "not worth its compilation"
    val_every = chosen.val_every
    train_s = budget - (time.monotonic() - started) - reserve / 2
    overrides = {
        "models.hparams.f_maps": chosen.f_maps,
        "models.hparams.num_levels": chosen.num_levels,
        "datasets.batch_size": chosen.batch_size,
        "datasets.patch_size": chosen.patch,
        "lightning.max_epochs": chosen.epochs,
        "lightning.check_val_every_n_epoch": val_every,
        "lightning.max_time": _duration(train_s),
    }
    if mode != "never":
        overrides["models.compile"] = chosen.compiled
    if network:
        for key in ("models.hparams.f_maps", "models.hparams.num_levels"):
            overrides.pop(key)
    for key, yours in user_values(cfg, list(overrides)).items():
        if yours != plain(overrides[key]):
            log.warning(
                "budget=%s replaces %s=%s with %s; drop budget= to keep yours",
                cfg.budget, key, yours, overrides[key],
            )  # fmt: skip
    overrides.update(extra)  # recorded in plan.yaml with the plan's own choices
    plan = Plan(
        budget_s=budget,
        device=str(device),
        fingerprint=fp,
        candidates=candidates,
        chosen=chosen.name,
        epochs=chosen.epochs,
        steps=chosen.steps,
        check_val_every_n_epoch=val_every,
        train_s=round(train_s, 1),
        planning_s=round(time.monotonic() - started, 1),
        why=why,
        overrides=overrides,
        epochs_end_s=round(budget - reserve - 2 * chosen.val_s, 1),
    )
    planned = cfg.copy()
    with open_dict(planned):
        for key, value in overrides.items():
            OmegaConf.update(planned, key, value, force_add=True)
        planned.budget = None  # applied: a resume continues this plan, it does not replan
    plan.show(cfg.budget)
    return planned, plan


def _select(
    candidates: Sequence[Candidate], budget: Any, steps_per_epoch: int
) -> tuple[Candidate, str]:
    """The largest candidate that gets at least :data:`MIN_SAMPLES` training samples, else the
    one with the most steps; and why.

    Raises:
        ConfigError: not even one epoch of any candidate fits.
    """
    timed = [c for c in candidates if c.epochs >= 1]
    if not timed:
        fastest = min(candidates, key=lambda c: c.s_per_step)
        raise ConfigError(
            f"budget={budget}: not even one epoch fits ({steps_per_epoch} steps of "
            f"{fastest.s_per_step:.2f} s plus validation); give a longer budget"
        )
    enough = [c for c in timed if c.steps * c.batch_size >= MIN_SAMPLES]
    if enough:
        chosen = enough[-1]  # the largest network that still sees enough samples
        return chosen, (
            f"largest network with at least {MIN_SAMPLES} training samples "
            f"({chosen.steps} steps x batch {chosen.batch_size}) in the budget"
        )
    chosen = max(timed, key=lambda c: c.steps)
    return chosen, f"no candidate reaches {MIN_SAMPLES} samples: the one with the most steps"


def recipe(cfg: DictConfig) -> dict[str, Any]:
    """The :data:`RECIPE` values for the keys of ``cfg`` still at their default (the value
    of the same key composed without overrides, models group of the same network)."""
    defaults = defaults_like(cfg)
    if defaults is None:
        return {}
    return {
        key: value
        for key, value in RECIPE.items()
        if OmegaConf.select(cfg, key) == OmegaConf.select(defaults, key)
    }


def _compile_mode(cfg: DictConfig, device: torch.device, budget: float) -> str:
    """``always``: the run compiles anyway (``models.compile: true``, or ``auto`` on a GPU),
    so the plan times the chosen network compiled; ``if_faster``: a CPU with ``auto`` and a
    budget long enough to pay for compiling, which the plan adopts only when it gets more
    steps; ``never``: otherwise."""
    setting = cfg.models.get("compile", "auto")
    if compile_enabled(setting, device.type):
        return "always"
    cpu_auto = device.type == "cpu" and str(setting).lower() == "auto"
    return "if_faster" if cpu_auto and budget >= COMPILE_MIN_BUDGET_S else "never"


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
    steps = 10
    start = time.monotonic()
    try:
        module = build(trial)
        c.s_per_step, _ = time_steps(
            module, train, val[:1], c.patch, c.batch_size, c.num_levels,
            cfg.get("augmentation"), device, steps, bf16,
        )  # fmt: skip
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


def _duration(seconds: float) -> str:
    """Lightning's ``max_time`` format ``DD:HH:MM:SS``."""
    s = max(int(seconds), 1)
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"

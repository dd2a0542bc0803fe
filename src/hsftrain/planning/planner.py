"""The planner: from candidate timings to a :class:`~hsftrain.planning.plan.Plan`, as pure
functions of their inputs (the fingerprint, the candidates with their measured seconds per
step, the budget, the seconds already spent and the settings). No timing, no config: what
is timed, and when, is the caller's (``training/budget.py``); these functions can be tested
on made-up timings.

The rule: every timed candidate is fitted to the time left (:meth:`Candidate.fit`); the
largest one that still gets ``planning.min_samples`` training samples is chosen, else the
one with the most steps (:func:`select`); a compiled timing of the choice replaces it when
it gets ``planning.compile.gain`` times its steps (:func:`with_compiled`); the plan then
sets the network, batch, patch, epochs, validation interval and time cap (:func:`decide`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hsftrain.core.errors import ConfigError
from hsftrain.planning.candidates import Candidate
from hsftrain.planning.plan import Plan
from hsftrain.planning.settings import PlanningSettings


def fit_all(
    candidates: Sequence[Candidate],
    available_s: float,
    steps_per_epoch: int,
    step_s: Callable[[int], float] | None = None,
) -> None:
    """Fit every timed candidate to ``available_s`` seconds (:meth:`Candidate.fit`)."""
    for c in candidates:
        if math.isfinite(c.s_per_step):
            c.fit(available_s, steps_per_epoch, step_s)


def select(
    candidates: Sequence[Candidate], settings: PlanningSettings, budget: Any, steps_per_epoch: int
) -> tuple[Candidate, str]:
    """The largest fitted candidate that gets at least ``settings.min_samples`` training
    samples, else the one with the most steps; and why.

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
    least = settings.min_samples
    enough = [c for c in timed if c.steps * c.batch_size >= least]
    if enough:
        chosen = enough[-1]  # the largest network that still sees enough samples
        return chosen, (
            f"largest network with at least {least} training samples "
            f"({chosen.steps} steps x batch {chosen.batch_size}) in the budget"
        )
    chosen = max(timed, key=lambda c: c.steps)
    return chosen, f"no candidate reaches {least} samples: the one with the most steps"


def close_call(chosen: Candidate, larger: Candidate, settings: PlanningSettings) -> bool:
    """Whether ``larger`` (a network after the choice) is worth timing a second time: the
    choice reaches ``min_samples`` (else nothing qualified: not a close call) and ``larger``
    was timed (other load on the machine only ever slows a step)."""
    return chosen.steps * chosen.batch_size >= settings.min_samples and math.isfinite(
        larger.s_per_step
    )


def with_compiled(
    chosen: Candidate,
    compiled: Candidate,
    left_s: float,
    steps_per_epoch: int,
    why: str,
    settings: PlanningSettings,
    always: bool,
) -> tuple[Candidate, str]:
    """The choice between ``chosen`` and its compiled timing, both fitted to ``left_s``
    (the trial's own time is spent whichever way the choice goes): the compiled one when
    ``always`` (the run compiles anyway) or it gets ``settings.compile_gain`` times the
    steps; and why."""
    chosen.fit(left_s, steps_per_epoch)
    why += f" ({chosen.steps} steps after the compile trial)"
    if not math.isfinite(compiled.s_per_step):
        return chosen, why
    compiled.fit(left_s, steps_per_epoch)
    if always or compiled.steps >= settings.compile_gain * chosen.steps:
        why += (
            f"; compiled: {compiled.s_per_step:.2f} s/step instead of "
            f"{chosen.s_per_step:.2f}, {compiled.steps} steps after ~"
            f"{compiled.compile_s:.0f} s of compilation"
        )
        return compiled, why
    compiled.note = "not worth its compilation"
    return chosen, why


def decide(
    chosen: Candidate,
    why: str,
    candidates: list[Candidate],
    fingerprint: Mapping[str, Any],
    budget_s: float,
    elapsed_s: float,
    settings: PlanningSettings,
    **options: Any,
) -> Plan:
    """The plan of ``chosen``: its overrides (network, batch, patch, epochs, validation
    interval, ``lightning.max_time``) and what the run needs to keep to its budget.

    Args:
        elapsed_s: seconds of the run spent so far (planning included).
        options: ``device`` (str), ``planning_s`` (seconds planning took), ``compile``
            (whether ``models.compile`` is planned), ``network`` (the network is the user's
            or the pretrained one: not set by the plan), ``extra`` (recipe values recorded
            with the plan), ``classes`` (the run's class names).
    """
    reserve = settings.reserve_s(budget_s)
    train_s = budget_s - elapsed_s - reserve / 2
    overrides: dict[str, Any] = {
        "models.hparams.f_maps": chosen.f_maps,
        "models.hparams.num_levels": chosen.num_levels,
        "datasets.batch_size": chosen.batch_size,
        "datasets.patch_size": chosen.patch,
        "lightning.max_epochs": chosen.epochs,
        "lightning.check_val_every_n_epoch": chosen.val_every,
        "lightning.max_time": duration(train_s),
    }
    if options.get("compile"):
        overrides["models.compile"] = chosen.compiled
    if options.get("network"):
        for key in ("models.hparams.f_maps", "models.hparams.num_levels"):
            overrides.pop(key)
    return Plan(
        budget_s=budget_s,
        device=str(options.get("device", "cpu")),
        fingerprint=dict(fingerprint),
        candidates=candidates,
        chosen=chosen.name,
        epochs=chosen.epochs,
        steps=chosen.steps,
        check_val_every_n_epoch=chosen.val_every,
        train_s=round(train_s, 1),
        planning_s=round(float(options.get("planning_s", elapsed_s)), 1),
        why=why,
        overrides=overrides,
        epochs_end_s=round(budget_s - reserve - 2 * chosen.val_s, 1),
        classes=list(options.get("classes") or []),
    )


def duration(seconds: float) -> str:
    """Lightning's ``max_time`` format ``DD:HH:MM:SS``."""
    s = max(int(seconds), 1)
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"

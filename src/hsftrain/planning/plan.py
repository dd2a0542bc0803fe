"""The plan: what ``budget=`` (or ``hsftrain plan``) decided, saved as ``plan.yaml``, read
back for ``hsftrain train plan=<plan.yaml>``, and applied to a config.

A plan made on other data still trains (its timings may not hold: one warning naming the
differences); a plan made for other classes is refused, and so is a file that is not a
plan (one line naming the file and the key).
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from hsftrain.config.values import plain
from hsftrain.core.atomic import write_text_atomic
from hsftrain.core.errors import ConfigError
from hsftrain.planning.candidates import (
    LIGHTNING_OVERHEAD,
    Candidate,
    _costs,
    epochs_within,
    user_values,
)

log = logging.getLogger(__name__)

#: The epoch (0-based) whose duration sets the run's pace: the first pays for compilation.
PACE_EPOCH = 1
#: How far a measured pace may move the plan (one stalled epoch must not cut the run short).
PACE_LIMITS = (0.5, 2.0)


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
    #: what the run's measured pace changed (``training.pace.BudgetPace``)
    paced: str = ""
    #: the run's class names (a plan is refused for other classes)
    classes: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        data = asdict(self)
        for c in data["candidates"]:
            c.pop("epoch_s")
        write_text_atomic(path, OmegaConf.to_yaml(OmegaConf.create(data)))

    @classmethod
    def load(cls, path: Path) -> Plan:
        """The plan saved in ``path``.

        Raises:
            ConfigError: no such file, or not a plan (the file and the key named).
        """
        where = f"plan={path}"
        if not path.is_file():
            raise ConfigError(f"{where}: no such file; make one with hsftrain plan budget=<time>")
        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{where}: not YAML ({str(err).splitlines()[0]})") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: not a plan (a mapping of keys is expected)")
        required = {f.name for f in fields(cls)} - {"overrides", "epochs_end_s", "paced", "classes"}
        if missing := sorted(required - set(data)):
            raise ConfigError(f"{where}: key {missing[0]} is missing; make the plan again")
        try:
            candidates = [Candidate(**_known(Candidate, c)) for c in data["candidates"]]
            plan = cls(**{**_known(cls, data), "candidates": candidates})
            plan.epochs, plan.steps = int(plan.epochs), int(plan.steps)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: key candidates or epochs is not a plan's ({err})") from err
        if not isinstance(plan.overrides, dict) or "lightning.max_epochs" not in plan.overrides:
            raise ConfigError(f"{where}: key overrides has no lightning.max_epochs; make it again")
        if plan.chosen not in [c.name for c in candidates]:
            raise ConfigError(f"{where}: key chosen={plan.chosen} names none of its candidates")
        return plan

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

    def restore_pace(self, steps_per_epoch: int) -> None:
        """The chosen candidate's planned epoch costs (not saved in ``plan.yaml``), for a
        run trained from a plan file to keep its pace as a ``budget=`` run does."""
        c = self.chosen_candidate()
        if not (math.isfinite(c.s_per_step) and math.isfinite(c.val_s)):
            return
        costs = _costs(steps_per_epoch, lambda _: c.s_per_step, c.val_s / c.val_every)
        c.epoch_s = [next(costs) for _ in range(2 * max(self.epochs, 1))]

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
        return done + max(epochs_within(later, left), 1)

    def check_data(
        self, where: str, fingerprint: Mapping[str, Any], classes: Sequence[str]
    ) -> None:
        """Warn (one line) when this plan was made on other data: its timings may not hold.

        Raises:
            ConfigError: it was made for other classes.
        """
        if self.classes and list(classes) and list(self.classes) != list(classes):
            raise ConfigError(
                f"{where} was made for the classes {', '.join(self.classes)}; this run has "
                f"{', '.join(classes)}: make the plan again with hsftrain plan on this data"
            )
        differ = [
            f"{label} {_shown(self.fingerprint.get(key))} (plan) vs {_shown(fingerprint.get(key))}"
            for key, label in (("median_shape", "median shape"), ("subjects", "training subjects"))
            if self.fingerprint.get(key) is not None
            and plain(self.fingerprint.get(key)) != plain(fingerprint.get(key))
        ]
        if differ:
            log.warning(
                "%s was made for other data (%s): its timings may not hold here; make the plan "
                "again with hsftrain plan on this data", where, "; ".join(differ),
            )  # fmt: skip


def warn_replaced(cfg: DictConfig, overrides: Mapping[str, Any], source: str) -> None:
    """One warning for each value of yours that ``overrides`` replaces."""
    for key, yours in user_values(cfg, list(overrides)).items():
        if yours != plain(overrides[key]):
            log.warning(
                "%s replaces %s=%s with %s; drop %s to keep yours",
                source, key, yours, overrides[key], source.split("=")[0] + "=",
            )  # fmt: skip


def applied(cfg: DictConfig, overrides: Mapping[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with the plan's ``overrides`` set, and ``budget`` and ``plan``
    unset (applied: a resume continues this plan, it does not plan again)."""
    planned = cfg.copy()
    with open_dict(planned):
        for key, value in overrides.items():
            OmegaConf.update(planned, key, value, force_add=True)
        planned.budget = None
        if "plan" in planned:
            planned.plan = None
    return planned


def _known(kind: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of the dataclass ``kind`` (a newer plan's
    extra keys are ignored)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"a mapping is expected, not {data!r}")
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in data.items() if k in names}


def _shown(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) else str(value)

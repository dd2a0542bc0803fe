"""The planning settings (``conf/planning/default.yaml``, the ``planning`` keys of a
composed config), read into one typed, frozen :class:`PlanningSettings`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from hsftrain.config.compose import compose
from hsftrain.config.keys import ABSENT, get_value
from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError

#: A candidate network: (f_maps, num_levels); f_maps an int (doubled at each level) or the
#: channels of each level.
Network = tuple[int | list[int], int]


@dataclass(frozen=True)
class PlanningSettings:
    """What a plan is made with; each field is the key of the same name (``planning.``)."""

    min_samples: int
    reserve_max_s: float
    reserve_base_s: float
    reserve_share: float
    timing_share: float
    gpu_steps: int
    cpu_min_steps: int
    cpu_s_per_step: float
    thawing_steps: int
    cpu_batch: int
    gpu_batch: int
    cpu_candidates: tuple[Network, ...]
    gpu_candidates: tuple[Network, ...]
    compile_min_budget_s: float
    compile_gain: float
    compile_steps: int
    recipe: Mapping[str, Any]

    def reserve_s(self, budget_s: float) -> float:
        """Seconds kept for start-up, the last checkpoint and the export."""
        return min(self.reserve_max_s, self.reserve_base_s + self.reserve_share * budget_s)

    def batch(self, cuda: bool) -> int:
        """The candidates' batch size when ``datasets.batch_size`` is left at its default."""
        return self.gpu_batch if cuda else self.cpu_batch

    def networks(self, cuda: bool) -> tuple[Network, ...]:
        """The candidate networks, smallest first."""
        return self.gpu_candidates if cuda else self.cpu_candidates

    def timed_steps(self, cuda: bool, budget_s: float) -> int:
        """Steps timed per candidate (more on a CPU with a longer budget: less noise)."""
        if cuda:
            return self.gpu_steps
        return min(self.cpu_min_steps + int(budget_s // self.cpu_s_per_step), self.gpu_steps)


def planning_settings(cfg: DictConfig) -> PlanningSettings:
    """The ``planning`` keys of ``cfg`` (the packaged ones when it has none, e.g. a run
    directory's config written before they existed).

    Raises:
        ConfigError: a key missing or of the wrong type, named.
    """
    node = cfg.get("planning")
    p = plain(node if node is not None else compose("config").planning)
    get = _Reader(p)
    return PlanningSettings(
        min_samples=get.number("min_samples", int),
        reserve_max_s=get.number("reserve.max_s"),
        reserve_base_s=get.number("reserve.base_s"),
        reserve_share=get.number("reserve.share"),
        timing_share=get.number("timing.budget_share"),
        gpu_steps=get.number("timing.gpu_steps", int, low=1),
        cpu_min_steps=get.number("timing.cpu_min_steps", int, low=1),
        cpu_s_per_step=get.number("timing.cpu_s_per_step", low=1),
        thawing_steps=get.number("timing.thawing_steps", int, low=1),
        cpu_batch=get.number("batch_size.cpu", int, low=1),
        gpu_batch=get.number("batch_size.gpu", int, low=1),
        cpu_candidates=get.networks("candidates.cpu"),
        gpu_candidates=get.networks("candidates.gpu"),
        compile_min_budget_s=get.number("compile.min_budget_s"),
        compile_gain=get.number("compile.gain"),
        compile_steps=get.number("compile.steps", int, low=1),
        recipe=dict(get.value("recipe") or {}),
    )


class _Reader:
    """Values of the ``planning`` mapping by dotted key, checked."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def value(self, key: str) -> Any:
        node = get_value(self.data, key)
        if node is ABSENT:
            raise ConfigError(f"planning.{key} is missing: restore it (conf/planning)")
        return node

    def number(self, key: str, kind: type = float, low: float = 0) -> Any:
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"planning.{key}={value}: give {what} of at least {low}")
        if kind is int and value != int(value):
            raise ConfigError(f"planning.{key}={value}: give a whole number")
        return kind(value)

    def networks(self, key: str) -> tuple[Network, ...]:
        value = self.value(key)
        out: list[Network] = []
        items: list[Any] = value if isinstance(value, list) else [None]
        for item in items:
            pair: list[Any] = item if isinstance(item, list) and len(item) == 2 else [None, None]
            f_maps, levels = pair[0], pair[1]
            wide = isinstance(f_maps, int) or (isinstance(f_maps, list) and bool(f_maps))
            if not wide or not isinstance(levels, int):
                raise ConfigError(
                    f"planning.{key}={value}: give a list of [f_maps, num_levels] pairs, "
                    "e.g. [[8, 3], [16, 4]]"
                )
            out.append((f_maps, levels))
        return tuple(out)

"""The candidate networks of a plan (those the data is large enough for), their cost model,
and which of your own values a plan keeps (:data:`KEPT`).

The planner times a few steps of each candidate; :meth:`Candidate.fit` turns those timings
into the number of epochs that end within the time available, with validation every k
epochs so that it takes at most :data:`VALIDATION_SHARE` of the time.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hsftrain.config.compose import compose, defaults_like
from hsftrain.config.values import plain
from hsftrain.data.datamodule import input_multiple, patch_size
from hsftrain.models.blocks import feature_sizes
from hsftrain.planning.settings import Network, PlanningSettings

log = logging.getLogger(__name__)

#: Share of the training time that validation may take.
VALIDATION_SHARE = 0.08
#: A training epoch under Lightning (logging, callbacks, checkpoints, loader start) over the
#: timed steps and validation: 36 s against 32.8 s planned in a 30-minute MSD run.
LIGHTNING_OVERHEAD = 1.1

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


def user_network(cfg: DictConfig) -> Network | None:
    """``(f_maps, num_levels)`` when ``models.hparams.f_maps`` or ``num_levels`` is not the
    default: ``budget=`` then plans the epochs of that network; None: the plan chooses."""
    if not user_values(cfg, KEPT[:2]):
        return None
    return network_of(plain(cfg.models.hparams))


def network_of(hparams: Mapping[str, Any]) -> Network:
    """``(f_maps, num_levels)`` of a network's hparams (a pretrained one's, for fine-tuning);
    an ``f_maps`` list gives the channels of each level, and so their number."""
    f_maps = hparams.get("f_maps", 64)
    sizes = feature_sizes(f_maps, int(hparams.get("num_levels", 4)))  # what the network builds
    return (f_maps if isinstance(f_maps, int) else sizes), len(sizes)


def recipe(cfg: DictConfig, settings: PlanningSettings) -> dict[str, Any]:
    """The recipe values (``planning.recipe``) for the keys of ``cfg`` still at their
    default (the value of the same key composed without overrides, models group of the
    same network)."""
    defaults = defaults_like(cfg)
    if defaults is None:
        return {}
    return {
        key: value
        for key, value in settings.recipe.items()
        if OmegaConf.select(cfg, key) == OmegaConf.select(defaults, key)
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
        self.epochs = epochs_within(self.epoch_s, train_s)
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


def candidates_for(
    cfg: DictConfig,
    pairs: Sequence[Network],
    shapes: Sequence[Sequence[int]],
    batch: int,
    median_shape: Any,
    shallower: bool,
) -> list[Candidate]:
    """:func:`fitting_candidates`; with ``shallower`` (the plan chooses the network) and
    none fitting (tiny volumes), the same widths with fewer levels, deepest first."""
    candidates = fitting_candidates(cfg, pairs, shapes, batch)
    if candidates or not shallower:
        return candidates
    for depth in range(max(levels for _, levels in pairs) - 1, 1, -1):
        fewer = dict.fromkeys((f, min(n, depth)) for f, n in pairs if isinstance(f, int))
        candidates = fitting_candidates(cfg, list(fewer), shapes, batch)
        if candidates:
            log.info(
                "budget: the data (median shape %s) is too small for the candidates' "
                "depth: planning them with at most %d levels", median_shape, depth,
            )  # fmt: skip
            return candidates
    return []


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


def epochs_within(costs: list[float], seconds: float) -> int:
    """How many of these epochs, in order, end within ``seconds``."""
    return sum(1 for t in itertools.accumulate(costs) if t <= seconds)

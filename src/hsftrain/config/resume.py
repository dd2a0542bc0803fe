"""``resume=RUN``: continue a run from its own ``config.yaml``.

The configuration of a resumed run is the one saved in its run directory, not the
packaged defaults: ``hsftrain train resume=runs/x lightning.max_epochs=30`` rebuilds the
model the checkpoints were trained with. Overrides given with ``resume`` may only change
what is safe to change in the middle of a run (:data:`RESUME_SAFE`: epochs, progress and
logging, workers, devices, where the data lies); repeating the run's own values is
accepted (``hsftrain train <same overrides> resume=...``); anything else is refused with
one line naming the keys. Keys added to hsftrain after the run was made take the values
the command line composes (the defaults). A ``budget=`` run resumed with more
``lightning.max_epochs`` has its time cap (``lightning.max_time``, set by the plan) scaled
with them, said in a line (:func:`budget_time_cap`), unless ``lightning.max_time`` is given.

This module only composes configuration: it imports neither torch nor Lightning.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hsftrain.config.keys import value_as_written
from hsftrain.config.values import leaves
from hsftrain.core.errors import ConfigError

log = logging.getLogger(__name__)

#: Keys (fnmatch patterns) that may differ from the run's when resuming.
RESUME_SAFE: tuple[str, ...] = (
    "lightning.max_epochs",
    "lightning.max_steps",
    "lightning.max_time",
    "lightning.enable_progress_bar",
    "lightning.log_every_n_steps",
    "lightning.accelerator",
    "lightning.devices",
    "lightning.num_nodes",
    "lightning.strategy",
    "lightning.precision",
    "lightning.check_val_every_n_epoch",
    "lightning.limit_val_batches",
    "lightning.deterministic",
    "lightning.benchmark",
    "datasets.main_path",
    "datasets.num_workers",
    "datasets.pin_memory",
    "datasets.persistent_workers",
    "datasets.cache_dir",
    "augmentation.device",
    "models.compile",
    "logger",
    "logger.*",
    "validation.*",
    "export_onnx",
    "resume",
)
#: Keys that name a new run; a resume continues the run it is given, so they are ignored.
IGNORED: tuple[str, ...] = ("run_name", "datasets.output_path", "split_file")
#: Mappings taken whole from the run (never merged with the command line's defaults).
RUN_MAPPINGS: tuple[str, ...] = ("datasets.datasets", "models.labels_names")


def run_dir_of(target: str | Path) -> Path:
    """The run directory named by ``resume``: the folder itself, or a checkpoint's run.

    Raises:
        FileNotFoundError: nothing there.
    """
    path = Path(str(target)).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    raise FileNotFoundError(f"resume={target}: no such checkpoint file or run directory")


def _keys_set(item: str, asked: DictConfig) -> list[str]:
    """Leaves of the config that override ``item`` sets."""
    key = item.partition("=")[0].lstrip("+~").split("@")[0]
    node = OmegaConf.select(asked, key, throw_on_missing=False) if key else asked
    if isinstance(node, DictConfig):  # a group (datasets=sample): every key of it
        node = OmegaConf.to_container(node, resolve=False, throw_on_missing=False)
    return [k for k, _ in leaves(node, key, RUN_MAPPINGS)]


def _safe(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUME_SAFE)


def saved_config(target: str) -> DictConfig:
    """The ``config.yaml`` of the run named by ``resume=target``.

    Raises:
        ConfigError: no ``config.yaml`` in the run.
        FileNotFoundError: ``target`` names nothing.
    """
    saved_file = run_dir_of(target) / "config.yaml"
    if not saved_file.is_file():
        raise ConfigError(
            f"resume={target}: {saved_file} is missing, so the run's model and data are "
            "unknown; resume a run directory written by hsftrain train / finetune"
        )
    loaded = OmegaConf.load(saved_file)
    assert isinstance(loaded, DictConfig)
    return loaded


def budget_time_cap(target: str, saved: DictConfig, changed: dict[str, Any]) -> str | None:
    """The time cap of a ``budget=`` run (it has ``plan.yaml``) resumed with more epochs:
    its ``lightning.max_time`` scaled by new epochs / planned epochs (Lightning counts the
    training time of every session of the run against it), logged; None otherwise."""
    cap = value_as_written(saved, "lightning.max_time")
    old = value_as_written(saved, "lightning.max_epochs")
    new = changed.get("lightning.max_epochs")
    if not (cap and old and new) or int(new) <= int(old):
        return None
    if not (run_dir_of(target) / "plan.yaml").is_file():
        return None
    if not re.fullmatch(r"\d+:\d+:\d+:\d+", str(cap)):  # not the plan's DD:HH:MM:SS
        log.info("resume: lightning.max_time=%s still applies to the %d epochs", cap, int(new))
        return None
    d, h, m, sec = (int(p) for p in str(cap).split(":"))
    seconds = math.ceil((((d * 24 + h) * 60 + m) * 60 + sec) * int(new) / int(old))
    scaled = f"{seconds // 86400:02d}:{seconds % 86400 // 3600:02d}:"
    scaled += f"{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    log.info(
        "resume: the budget's time cap lightning.max_time=%s becomes %s, scaled with "
        "lightning.max_epochs %d -> %d; give lightning.max_time to choose another",
        cap, scaled, int(old), int(new),
    )  # fmt: skip
    return scaled


def resume_config(
    target: str, saved: DictConfig, others: Sequence[str], asked: DictConfig
) -> DictConfig:
    """The configuration of ``resume=target``: the run's ``saved`` config, with what the
    ``others`` overrides change (``asked``: the config they compose) where that is safe.

    Args:
        target: the ``resume`` value (run directory or checkpoint).
        saved: :func:`saved_config` of ``target``.
        others: the other prepared overrides (:func:`hsftrain.config.overrides.prepare`).
        asked: the packaged config composed with ``others``.

    Raises:
        ConfigError: overrides that change keys outside :data:`RESUME_SAFE` (all of them
            named, with the run's and the given value).
    """
    saved_file = run_dir_of(target) / "config.yaml"
    changed: dict[str, Any] = {}
    refused: list[str] = []
    given: set[str] = set()
    for item in others:
        for key in _keys_set(item, asked):
            given.add(key)
            if any(key == k or key.startswith(k + ".") for k in IGNORED):
                continue
            mine, theirs = (value_as_written(c, key) for c in (asked, saved))
            if mine == theirs:
                continue
            if _safe(key):
                changed[key] = mine
            else:
                refused.append(f"{key} ({theirs!r} in the run, {mine!r} here)")
    if refused:
        raise ConfigError(
            f"resume={target}: {'; '.join(dict.fromkeys(refused))} cannot change when resuming "
            "(the checkpoints were trained with the run's values); drop them to continue with "
            f"{saved_file}, or start a new run with run_name=NEW"
        )
    OmegaConf.set_struct(asked, False)  # the run may hold keys the defaults lack
    cfg = OmegaConf.merge(asked, saved)
    for key in RUN_MAPPINGS:
        if OmegaConf.select(saved, key, default=None) is not None:
            OmegaConf.update(cfg, key, OmegaConf.select(saved, key), merge=False)
    for key, value in changed.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        log.info("resume: %s = %r (the run had %r)", key, value, value_as_written(saved, key))
    if "lightning.max_time" not in given and (cap := budget_time_cap(target, saved, changed)):
        OmegaConf.update(cfg, "lightning.max_time", cap, merge=False)
    OmegaConf.update(cfg, "resume", str(target), force_add=True)
    OmegaConf.set_struct(cfg, True)
    assert isinstance(cfg, DictConfig)  # merged from two DictConfigs
    return cfg

"""``hsftrain train`` / ``finetune`` end to end: train, then export; or a bagging ensemble.

This is the only module that chains the workflow's stages: :func:`hsftrain.training.run.run`
trains (or fine-tunes) and writes the checkpoints, then :func:`train_and_export` exports
the best checkpoint to ``<run>/model.onnx`` (:mod:`hsftrain.export`), so that
``training/`` never imports ``export/``.

``ensemble.members=K`` trains member ``k`` with ``seed + k`` on a bootstrap sample
(``datasets.replace=true``; out-of-bag subjects validate it), in
``<output_path>/<run_name>/member_<k>/``, exports each to ONNX, and writes
``<output_path>/<run_name>/preset.yaml``: a ``segmentation`` preset (paths + xxh3_64) that
``hsftrain segment segmentation=<that file>`` runs. With ``budget=``, the budget is shared:
each member is planned for ``budget / members`` (:func:`member_budget`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from hsftrain.core.atomic import write_text_atomic
from hsftrain.core.errors import ConfigError, ExportError, NonFiniteError
from hsftrain.core.logs import run_log
from hsftrain.export.api import export_checkpoint
from hsftrain.hub.fetch import file_hash
from hsftrain.training.distributed import is_rank_zero
from hsftrain.training.run import RunResult, run
from hsftrain.training.validate import parse_budget

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train from scratch and export (an ensemble when ``ensemble.members > 1``). Returns
    the final validation metrics (per member for an ensemble).

    Raises:
        ConfigError, DataError, FileNotFoundError: with the key or file to fix.
    """
    return _dispatch(cfg, finetune=False)


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune ``finetuning.pretrained`` and export. Returns the final validation metrics.

    Raises:
        ConfigError, DataError, FileNotFoundError: with the key or file to fix.
    """
    return _dispatch(cfg, finetune=True)


def _dispatch(cfg: DictConfig, finetune: bool) -> dict[str, Any]:
    if int(OmegaConf.select(cfg, "ensemble.members", default=1) or 1) > 1:
        return train_ensemble(cfg, finetune=finetune)
    return train_and_export(cfg, finetune=finetune)


def train_and_export(cfg: DictConfig, finetune: bool = False) -> dict[str, Any]:
    """:func:`~hsftrain.training.run.run`, then (``export_onnx``, rank 0) the best
    checkpoint exported to ``<run>/model.onnx``, recorded as ``onnx`` in ``metrics.json``
    and logged into the run's ``train.log``.

    Returns:
        The run's validation metrics with ``run_dir`` and ``best_checkpoint``.

    Raises:
        ConfigError, DataError, FileNotFoundError: with the key or file to fix.
        ExportError, NonFiniteError: the best checkpoint cannot be exported.
    """
    result = run(cfg, finetune=finetune)
    out = as_record(result)
    best = result.best_checkpoint
    if not (cfg.get("export_onnx", True) and best and is_rank_zero()):
        return out
    run_dir = result.run_dir
    try:
        with run_log(run_dir):
            onnx_path = export_checkpoint(str(best), run_dir / "model.onnx")
    except (ExportError, NonFiniteError) as error:  # the training itself is not lost
        raise type(error)(
            f"{error}. Training finished and its checkpoints are kept: {best} (best) and "
            f"the others in {Path(str(best)).parent}; `hsftrain export ckpt=...` exports one"
        ) from error
    record = run_dir / "metrics.json"
    metrics = json.loads(record.read_text()) if record.is_file() else {}
    metrics["onnx"] = str(onnx_path)
    write_text_atomic(record, json.dumps(metrics, indent=1))
    return out


def as_record(result: RunResult) -> dict[str, Any]:
    """A run's result as the workflow returns it: its validation metrics with ``run_dir``
    and ``best_checkpoint``."""
    return {
        **result.metrics,
        "run_dir": str(result.run_dir),
        "best_checkpoint": result.best_checkpoint,
    }


def member_budget(cfg: DictConfig, members: int) -> str | None:
    """Each member's share of ``budget`` (whole seconds, e.g. ``600s``); None without one.

    Raises:
        ConfigError: a share under the 1 minute a plan needs.
    """
    if not cfg.get("budget"):
        return None
    share = math.floor(parse_budget(cfg.budget) / members)
    if share < 60:
        raise ConfigError(
            f"budget={cfg.budget} with ensemble.members={members} leaves {share} s per member, "
            f"under the 1m a plan needs: give budget={members}m or more, or fewer ensemble.members"
        )
    log.info(
        "budget=%s with ensemble.members=%d: the budget is shared, each member is planned "
        "for %d s", cfg.budget, members, share,
    )  # fmt: skip
    return f"{share}s"


def member_config(cfg: DictConfig, k: int, name: str, budget: str | None = None) -> DictConfig:
    """Config of member ``k``: own seed, bootstrap sampling, run dir ``name/member_k``, and
    its share of the budget (:func:`member_budget`)."""
    member = cfg.copy()
    with open_dict(member):
        if budget is not None:
            member.budget = budget
        member.seed = int(cfg.seed) + k
        member.run_name = f"{name}/member_{k}"
        member.datasets.replace = True
        member.export_onnx = True
        member.ensemble.members = 1
    return member


def write_preset(path: Path, onnx_files: list[Path], ca_mode: str = "", tta: bool = True) -> Path:
    """Write a segmentation preset listing ``onnx_files`` with their xxh3_64, by paths
    relative to the preset's folder (the run directory can be moved or shared)."""
    preset = {
        "description": f"Bagging ensemble of {len(onnx_files)} models trained by hsftrain",
        "ca_mode": ca_mode,
        "models_path": None,
        "models": {
            f"{p.parent.name}.onnx": {
                "path": os.path.relpath(p.resolve(), path.parent.resolve()),
                "xxh3_64": file_hash(p),
            }
            for p in onnx_files
        },
        "tta": tta,
        "test_time_num_aug": None,
        "fusion": "vote",
    }
    return write_text_atomic(path, yaml.safe_dump(preset, sort_keys=False))


def train_ensemble(cfg: DictConfig, finetune: bool = False) -> dict[str, Any]:
    """Train ``ensemble.members`` bagging members; returns their metrics and the preset path.

    Raises:
        ConfigError: fewer than 2 members, or a ``budget`` under 1 minute per member.
    """
    k_members = int(cfg.ensemble.members)
    if k_members < 2:
        raise ConfigError("ensemble.members must be at least 2 for an ensemble")
    budget = member_budget(cfg, k_members)
    name = str(cfg.get("run_name") or time.strftime("%Y%m%d-%H%M%S"))
    root = Path(str(cfg.datasets.output_path)).expanduser() / name
    results, onnx_files = [], []
    for k in range(k_members):
        log.info("ensemble member %d/%d", k + 1, k_members)
        out = train_and_export(member_config(cfg, k, name, budget), finetune=finetune)
        results.append(out)
        onnx_files.append(Path(str(out["run_dir"])) / "model.onnx")
    preset = write_preset(root / "preset.yaml", onnx_files)
    OmegaConf.save(cfg, root / "ensemble_config.yaml", resolve=True)
    log.info("ensemble preset: %s  (hsftrain segment segmentation=%s ...)", preset, preset)
    return {"members": results, "preset": str(preset)}

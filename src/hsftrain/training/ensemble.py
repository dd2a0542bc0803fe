"""Bagging ensembles: K members on bootstrap samples, exported, and a segmentation preset.

``hsftrain train ... ensemble.members=K`` trains member ``k`` with ``seed + k`` on a
bootstrap sample (``datasets.replace=true``; out-of-bag subjects validate it), in
``<output_path>/<run_name>/member_<k>/``, exports each to ONNX, and writes
``<output_path>/<run_name>/preset.yaml``: a ``segmentation`` preset (paths + xxh3_64) that
``hsftrain segment segmentation=<that file>`` runs.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from hsftrain.config import ConfigError

log = logging.getLogger(__name__)


def member_config(cfg: DictConfig, k: int, name: str) -> DictConfig:
    """Config of member ``k``: own seed, bootstrap sampling, run dir ``name/member_k``."""
    member = cfg.copy()
    with open_dict(member):
        member.seed = int(cfg.seed) + k
        member.run_name = f"{name}/member_{k}"
        member.datasets.replace = True
        member.export_onnx = True
        member.ensemble.members = 1
    return member


def write_preset(path: Path, onnx_files: list[Path], ca_mode: str = "", tta: bool = True) -> Path:
    """Write a segmentation preset listing ``onnx_files`` with their xxh3_64, by paths
    relative to the preset's folder (the run directory can be moved or shared)."""
    from hsftrain.hub.fetch import file_hash

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(preset, sort_keys=False))
    tmp.replace(path)
    return path


def train_ensemble(cfg: DictConfig, finetune: bool = False) -> dict[str, object]:
    """Train ``ensemble.members`` bagging members; returns their metrics and the preset path.

    Raises:
        ConfigError: fewer than 2 members, or export disabled.
    """
    from hsftrain.training.run import run

    k_members = int(cfg.ensemble.members)
    if k_members < 2:
        raise ConfigError("ensemble.members must be at least 2 for an ensemble")
    name = str(cfg.get("run_name") or time.strftime("%Y%m%d-%H%M%S"))
    root = Path(str(cfg.datasets.output_path)).expanduser() / name
    results, onnx_files = [], []
    for k in range(k_members):
        log.info("ensemble member %d/%d", k + 1, k_members)
        out = run(member_config(cfg, k, name), finetune=finetune)
        results.append(out)
        onnx_files.append(Path(str(out["run_dir"])) / "model.onnx")
    preset = write_preset(root / "preset.yaml", onnx_files)
    OmegaConf.save(cfg, root / "ensemble_config.yaml", resolve=True)
    log.info("ensemble preset: %s  (hsftrain segment segmentation=%s ...)", preset, preset)
    return {"members": results, "preset": str(preset)}

"""``hsftrain export``: checkpoint -> verified ONNX model with metadata."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import xxhash
from omegaconf import DictConfig

from hsftrain.config import require
from hsftrain.export.onnx import export_onnx
from hsftrain.training.checkpoint import load_network

log = logging.getLogger(__name__)


def config_hash(config: dict) -> str:
    """xxh3_64 of the training config (sorted JSON), stored in exported models."""
    return xxhash.xxh3_64_hexdigest(json.dumps(config, sort_keys=True, default=str).encode())


def export_checkpoint(ckpt: str | Path, out: str | Path | None = None) -> Path:
    """Export an hsftrain checkpoint to ONNX (default: next to it, ``.onnx``), verified."""
    ckpt = Path(ckpt)
    out = Path(out) if out else ckpt.with_suffix(".onnx")
    net, info = load_network(ckpt)
    metadata = {
        "labels_names": info.class_names,
        "num_classes": len(info.class_names),
        "ca_mode": info.ca_mode,
        "model_name": info.name,
        "config_hash": config_hash(info.config),
    }
    path = export_onnx(net, out, metadata)
    log.info("exported %s -> %s", ckpt, path)
    return path


def export(cfg: DictConfig) -> Path:
    """CLI entry: ``hsftrain export ckpt=PATH [out=FILE]``."""
    ckpt = Path(str(require(cfg, "ckpt", "the .ckpt to export, e.g. ckpt=runs/x/checkpoints/last.ckpt")))
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt={ckpt}: no such checkpoint")
    return export_checkpoint(ckpt, cfg.get("out"))

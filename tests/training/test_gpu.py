"""GPU-only checks (skipped on CPU machines, run where a CUDA device exists)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tests.conftest import TINY


def train_and_check(phantoms: Path, out: Path, accelerator: str, precision: str) -> None:
    """Train 6 epochs with ``accelerator`` and ``precision``; the run must learn (lower
    validation loss at the end than after the first epoch), keep finite float32 weights,
    and export an ONNX model that reproduces it."""
    import torch

    from hsftrain.config.compose import compose
    from hsftrain.training.trainer import trainer_kwargs
    from hsftrain.workflow import train

    cfg = compose(
        "config",
        [
            *TINY,
            "datasets=synth",
            f"datasets.main_path={phantoms}",
            f"datasets.output_path={out}",
            "run_name=run",
            "export_onnx=true",
            "models.lr=1e-2",
            "lightning.max_epochs=6",
            f"lightning.accelerator={accelerator}",
            f"lightning.precision={precision}",
        ],
    )
    assert trainer_kwargs(cfg)["precision"] == precision  # not replaced by 32-true
    result = train(cfg)
    run = out / "run"
    with open(run / "logs" / "metrics.csv", newline="") as fh:
        val = [float(r["val/epoch/loss"]) for r in csv.DictReader(fh) if r["val/epoch/loss"]]
    assert len(val) == 6 and all(math.isfinite(v) for v in val)
    assert val[-1] < val[0], val
    assert 0.0 <= result["val/dice_mean"] <= 1.0
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    weights = [v for v in state["state_dict"].values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in weights)
    assert json.loads((run / "metrics.json").read_text())["onnx"] == str(run / "model.onnx")


@pytest.mark.gpu
@pytest.mark.slow
def test_bf16_training_on_gpu(phantoms: Path, tmp_path: Path) -> None:
    import torch

    torch.cuda.reset_peak_memory_stats()
    train_and_check(phantoms, tmp_path, "gpu", "bf16-mixed")
    assert torch.cuda.max_memory_allocated() > 0  # the GPU did the work

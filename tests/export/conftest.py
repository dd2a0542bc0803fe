"""Fixtures for the export tests: tiny networks and one tiny trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

TINY_HPARAMS = {
    "in_channels": 1,
    "out_channels": 3,
    "f_maps": 4,
    "num_levels": 2,
    "layer_order": "cgs",
    "conv_kernel_size": 3,
    "use_attention": True,
    "skip": "sum",
}


def tiny_net(seed: int = 0, **hparams: object) -> torch.nn.Module:
    """A ResidualUNet3D (f_maps 4, 2 levels) with random weights, in eval mode."""
    from hsftrain.models import build_model

    torch.manual_seed(seed)
    params = {**TINY_HPARAMS, **hparams}
    name = str(params.pop("name", "ResidualUNet3D"))
    return build_model(name, params).eval()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, phantoms: Path) -> Path:
    """Run directory of a 1-epoch training (f_maps 4, 2 levels) on the phantoms.

    Holds config.yaml, split.json and checkpoints/last.ckpt, as ``hsftrain train`` writes.
    """
    from hsftrain.config import compose
    from hsftrain.training.run import train

    out = tmp_path_factory.mktemp("export_runs")
    cfg = compose(
        "config",
        [
            *TINY,
            "datasets=synth",
            f"datasets.main_path={phantoms}",
            "models.lr=5e-3",
            f"datasets.output_path={out}",
            "run_name=tiny",
        ],
    )
    train(cfg)
    run_dir = out / "tiny"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run: Path) -> Path:
    return tiny_run / "checkpoints" / "last.ckpt"

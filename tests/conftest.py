"""Shared fixtures: tiny synthetic data written on the fly, and the real MSD samples."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="hsftrain-mpl-"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WANDB_MODE", "offline")

SAMPLE = Path(__file__).resolve().parents[1] / "src/hsftrain/assets/sample/msd_hippocampus"
SHARED_MSD = Path(__file__).resolve().parents[2] / "shared/data/msd_hippocampus"

#: Overrides for a tiny, fast training run (add datasets.* and output paths).
TINY = [
    "models.hparams.f_maps=4",
    "models.hparams.num_levels=2",
    "lightning.max_epochs=1",
    "lightning.enable_progress_bar=false",
    "logger=csv",
    "augmentation.elastic.p=0",
    "augmentation.motion.p=0",
    "export_onnx=false",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 16x20x16 synthetic phantoms with HSF subfield labels."""
    from hsftrain.data.synth import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, n=8, shape=(16, 20, 16), seed=0)
    return out


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The bundled real MSD hippocampus crops."""
    assert SAMPLE.is_dir(), SAMPLE
    return SAMPLE

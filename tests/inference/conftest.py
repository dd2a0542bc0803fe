"""Fixtures for the inference tests: tiny exported ONNX models and tiny MRIs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="hsftrain-mpl-"))
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
WHOLEHEAD = SHARED / "wholehead_niivue"
ORIENTATIONS = WHOLEHEAD / "orientations"
MSD = SHARED / "msd_hippocampus"
MSD_NAMES = ["background", "anterior", "posterior"]


def export_tiny(path: Path, out_channels: int, names: list[str], seed: int = 0) -> Path:
    """Export a ResidualUNet3D (f_maps 4, 2 levels) with random weights to ONNX."""
    import torch

    from hsftrain.export.onnx import OnnxOptions, export_onnx
    from hsftrain.models import build_model

    torch.manual_seed(seed)
    net = build_model(
        "ResidualUNet3D",
        dict(in_channels=1, out_channels=out_channels, f_maps=4, num_levels=2),
    ).eval()
    meta = {"labels_names": names, "num_classes": out_channels, "ca_mode": ""}
    return export_onnx(
        net,
        path,
        metadata=meta,
        options=OnnxOptions(example_shape=(1, 1, 16, 16, 16), verify_shapes=None),
    )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two tiny 3-class models (background / anterior / posterior), different weights."""
    folder = tmp_path_factory.mktemp("models")
    return [export_tiny(folder / f"tiny_{i}.onnx", 3, MSD_NAMES, seed=i) for i in range(2)]


@pytest.fixture(scope="session")
def tiny_model(tiny_models: list[Path]) -> Path:
    return tiny_models[0]


@pytest.fixture(scope="session")
def subfield_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with the eight HSF subfield classes."""
    from hsftrain.data.labels import SUBFIELDS

    folder = tmp_path_factory.mktemp("subfield_model")
    return export_tiny(folder / "subfields.onnx", len(SUBFIELDS), list(SUBFIELDS))


def write_crop(path: Path, shape=(20, 28, 20), seed: int = 0, zooms=(1.0, 1.0, 1.0)) -> Path:
    """A small hippocampus-crop-like MRI (a bright ellipsoid in noise)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.asarray(shape) - 1) / 2
    radius = np.asarray(shape) / 3.5
    inside = (((grid - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2).sum(0) < 1
    data = (rng.normal(100, 10, shape) + 80 * inside).astype(np.float32)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = (-20.0, -30.0, -25.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def crops(tmp_path: Path) -> Path:
    """A folder with two tiny crops in sub-folders: sub-0{1,2}/anat/sub-0{1,2}_T1w.nii.gz."""
    root = tmp_path / "data"
    for i in (1, 2):
        write_crop(root / f"sub-0{i}" / "anat" / f"sub-0{i}_T1w.nii.gz", seed=i)
    return root

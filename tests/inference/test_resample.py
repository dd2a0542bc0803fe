"""Crops at another voxel size than the model's."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.config.compose import compose
from hsftrain.inference.api import segment
from hsftrain.inference.resample import differs, model_spacing, plan, resample

from .conftest import MSD_NAMES, write_crop


def test_plan_keeps_the_field_of_view() -> None:
    grid = plan((20, 28, 20), (2.4, 2.4, 2.4), (1.0, 1.0, 1.0))
    assert grid.shape == (48, 67, 48)
    assert np.allclose(np.asarray(grid.shape) * grid.zooms, (48.0, 67.2, 48.0))


def test_resample_there_and_back_lands_on_the_grid() -> None:
    labels = np.zeros((10, 12, 8), np.uint8)
    labels[3:7, 4:9, 2:6] = 2
    up = resample(labels, (25, 30, 20), 0)
    assert up.shape == (25, 30, 20)
    back = resample(up, labels.shape, 0)
    np.testing.assert_array_equal(back, labels)
    same = resample(labels, labels.shape, 1)
    np.testing.assert_array_equal(same, labels)


def test_differs_and_model_spacing() -> None:
    assert differs((2.4, 2.4, 2.4), (1, 1, 1)) and not differs((1.1, 0.9, 1), (1, 1, 1))
    assert not differs((2.4, 2.4, 2.4), None)
    assert model_spacing([{}, {"spacing_mm": [1, 1, 1.2]}]) == (1.0, 1.0, 1.2)
    assert model_spacing([{"labels_names": MSD_NAMES}]) is None


@pytest.fixture(scope="module")
def one_mm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from hsftrain.export.onnx import OnnxOptions, export_onnx
    from hsftrain.models import build_model

    torch.manual_seed(0)
    net = build_model("ResidualUNet3D", dict(in_channels=1, out_channels=3, f_maps=4, num_levels=2))
    meta = {"labels_names": MSD_NAMES, "num_classes": 3, "ca_mode": "", "spacing_mm": [1, 1, 1]}
    path = tmp_path_factory.mktemp("m") / "one_mm.onnx"
    return export_onnx(
        net.eval(),
        path,
        meta,
        options=OnnxOptions(example_shape=(1, 1, 16, 16, 16), verify_shapes=None),
    )


@pytest.mark.parametrize("mode", ["auto", "warn"])
def test_coarse_crop_is_resampled_or_warned(
    one_mm_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    mri = write_crop(tmp_path / "in" / "coarse_T1w.nii.gz", shape=(12, 14, 12), zooms=(2.4,) * 3)
    cfg = compose(
        "segment",
        [
            f"files.path={mri}",
            f"model_paths=[{one_mm_model}]",
            f"resample.mode={mode}",
            "qc=false",
        ],
    )
    logger = logging.getLogger("hsftrain")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="hsftrain"):
            (seg_path,) = segment(cfg)
    finally:
        logger.removeHandler(caplog.handler)
    seg = nib.load(str(seg_path))
    assert seg.shape == (12, 14, 12)  # back on the input's grid
    assert "trained at 1x1x1 mm" in caplog.text
    if mode == "auto":
        assert "segmenting on a 29x34x29 grid" in caplog.text
    else:
        assert "segmenting as it is" in caplog.text

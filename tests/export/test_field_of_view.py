"""The training crop size stored in exported models (``field_of_view_mm``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from hsftrain.export.field_of_view import (
    canonical_extent,
    field_of_view_metadata,
    median_field_of_view,
)


def _image(path: Path, shape: tuple[int, int, int], affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), affine), str(path))
    return path


def test_extent_is_along_the_canonical_axes(tmp_path: Path) -> None:
    ras = _image(tmp_path / "ras.nii.gz", (10, 20, 30), np.diag([1.0, 2.0, 1.5, 1.0]))
    assert canonical_extent(ras) == (10.0, 40.0, 45.0)
    pir = np.zeros((4, 4))  # stored P, I, R: axis 0 -> -y, axis 1 -> -z, axis 2 -> +x
    pir[1, 0], pir[2, 1], pir[0, 2], pir[3, 3] = -2.0, -1.5, 1.0, 1.0
    stored = _image(tmp_path / "pir.nii.gz", (20, 30, 10), pir)
    assert canonical_extent(stored) == (10.0, 40.0, 45.0)


def test_training_field_of_view_is_the_median_of_the_run_training_images(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i, shape in enumerate([(30, 50, 36), (35, 50, 36), (40, 60, 30)]):
        _image(data / f"s{i}_img.nii.gz", shape, np.eye(4))
    _image(data / "s3_img.nii.gz", (200, 200, 200), np.eye(4))  # validation: not counted
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ids = [f"d/t1/s{i}_img.nii.gz" for i in range(3)]
    (run / "split.json").write_text(json.dumps({"train": ids, "val": ["d/t1/s3_img.nii.gz"]}))
    ckpt = run / "checkpoints" / "last.ckpt"
    config = {"datasets": {"main_path": str(data), "datasets": {"d": {"path": "."}}}}
    assert field_of_view_metadata(ckpt, config) == {"field_of_view_mm": [35.0, 50.0, 36.0]}
    assert field_of_view_metadata(tmp_path / "elsewhere.ckpt", config) == {}  # no run
    cropped = {"datasets": {**config["datasets"], "datasets": {"d": {"crop_margin_mm": 10}}}}
    assert field_of_view_metadata(ckpt, cropped) == {}  # crops the headers do not describe
    assert median_field_of_view([]) is None


def test_exported_model_carries_the_training_field_of_view(tiny_ckpt: Path, tmp_path: Path) -> None:
    from hsftrain.core.onnx_metadata import read_metadata
    from hsftrain.export.api import export_checkpoint

    path = export_checkpoint(tiny_ckpt, tmp_path / "m.onnx")
    assert read_metadata(path)["field_of_view_mm"] == [16.0, 20.0, 16.0]  # the phantoms, 1 mm

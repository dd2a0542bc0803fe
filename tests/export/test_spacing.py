"""The training voxel size stored in exported models."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from hsftrain.export.spacing import median_spacing, training_spacing


def _image(path: Path, zooms: tuple[float, float, float]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([*zooms, 1.0])), str(path))
    return path


def test_training_spacing_is_the_median_of_the_run_training_images(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i, z in enumerate([(1, 1, 1), (1, 1, 1.2), (0.8, 1, 1.2)]):
        _image(data / f"s{i}_img.nii.gz", z)  # type: ignore[arg-type]
    _image(data / "s3_img.nii.gz", (5, 5, 5))  # validation subject: not counted
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ids = [f"d/t1/s{i}_img.nii.gz" for i in range(3)]
    (run / "split.json").write_text(json.dumps({"train": ids, "val": ["d/t1/s3_img.nii.gz"]}))
    config = {"datasets": {"main_path": str(data), "datasets": {"d": {"path": "."}}}}
    assert training_spacing(run / "checkpoints" / "last.ckpt", config) == (1.0, 1.0, 1.2)
    assert training_spacing(tmp_path / "elsewhere.ckpt", config) is None  # no run: unknown
    assert median_spacing([]) is None


def test_exported_model_carries_the_training_spacing(tiny_ckpt: Path, tmp_path: Path) -> None:
    from hsftrain.core.onnx_metadata import read_metadata
    from hsftrain.export.api import export_checkpoint

    path = export_checkpoint(tiny_ckpt, tmp_path / "m.onnx")
    meta = read_metadata(path)
    assert meta["spacing_mm"] == [1.0, 1.0, 1.0]  # the phantoms' voxel size
    train = len(json.loads((tiny_ckpt.parent.parent / "split.json").read_text())["train"])
    assert meta["spacing_mm_counts"] == [{"spacing_mm": [1.0, 1.0, 1.0], "images": train}]

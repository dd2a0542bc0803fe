"""The files of ``hsftrain segment`` hold exactly what the models computed.

Everything around the network (reading, reorientation, z-normalisation, padding, flips and
their inversion, fusion, the largest component, NIfTI writing, the volumes table, the QC
figure) may be made faster, never different: each output is compared with a reference
computed here, step by step, from the public pieces (the canonical image, one
:class:`Segmenter` crop, the way back to the input's axes).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.config.compose import compose
from hsftrain.inference.api import settings_from_config
from hsftrain.inference.engines import OnnxEngine
from hsftrain.inference.image import load_volume
from hsftrain.inference.pipeline import side_rng
from hsftrain.inference.segmenter import Segmenter
from hsftrain.inference.writer import read_volumes

from .conftest import MSD_NAMES, write_crop

runner = CliRunner()


def lpi_crop(path: Path, seed: int) -> Path:
    """A crop stored L-P-I with a permuted last axis pair: its outputs go back to those axes."""
    ras = write_crop(path, shape=(18, 24, 20), seed=seed)
    img = nib.load(str(ras))
    data = np.asarray(img.dataobj)[::-1, ::-1, ::-1].transpose(0, 2, 1).copy()
    affine = np.array([[-1.0, 0, 0, 10.0], [0, 0, -1.0, 20.0], [0, -1.0, 0, 15.0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize(
    "overrides",
    [
        ["segmentation.tta=flip", "segmentation.fusion=mean"],  # as the msd preset
        ["segmentation.test_time_num_aug=2", "segmentation.fusion=vote"],  # random views
    ],
)
def test_outputs_equal_the_reference_computation(
    tmp_path: Path, tiny_model: Path, overrides: list[str]
) -> None:
    root = tmp_path / "data"
    mris = [write_crop(root / "a_T1w.nii.gz", seed=3), lpi_crop(root / "b_T1w.nii.gz", seed=4)]
    out = tmp_path / "out"
    args = [
        "segment",
        f"files.path={root}",
        "files.pattern=*_T1w.nii.gz",
        f"files.output_dir={out}",
        "segmentation=custom",
        f"model_paths=[{tiny_model}]",
        "segmentation.largest_component=true",
        "hardware=cpu",
        "seed=7",
        *overrides,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = settings_from_config(compose("segment", args[1:]))
    segmenter = Segmenter.from_settings([OnnxEngine(tiny_model)], settings)
    for mri in mris:
        stem = mri.name.removesuffix(".nii.gz")
        volume = load_volume(mri)
        expected = segmenter.segment_crop(volume.array, volume.zooms, side_rng(7, "crop"))
        seg = nib.load(str(out / f"{stem}_hippocampus_seg.nii.gz"))
        labels = np.asarray(seg.dataobj)
        assert labels.dtype == np.uint8 and seg.shape == volume.native_shape
        np.testing.assert_array_equal(labels, volume.native(expected.label_map))
        np.testing.assert_allclose(seg.affine, volume.native_affine, atol=1e-6)
        unc = nib.load(str(out / f"{stem}_hippocampus_uncertainty.nii.gz"))
        assert expected.uncertainty is not None
        np.testing.assert_allclose(
            np.asarray(unc.dataobj), volume.native(expected.uncertainty), atol=1e-6
        )
        rows = read_volumes(out / f"{stem}_hippocampus_volumes.csv")
        counts = np.bincount(labels.ravel(), minlength=3)
        assert [int(str(r["voxel_count"])) for r in rows] == [int(counts[1]), int(counts[2])]
        assert [r["name"] for r in rows] == MSD_NAMES[1:]
        assert (out / f"{stem}_hippocampus_qc.png").read_bytes()[:4] == b"\x89PNG"

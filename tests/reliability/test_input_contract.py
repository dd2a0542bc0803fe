"""``hsftrain segment`` never calls a doubtful result ``done``: a crop of another contrast
than the model's training crops, implausible volumes, an empty class, a strongly
asymmetric head, or a multispectral T2 that does not overlap its T1 are segmented and
flagged (status ``flagged``, the reason in volumes.csv's flag column, exit status 0)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from hsftrain.inference.roiloc import MNI_TEMPLATE
from tests.inference.test_contract import anatomy

from .conftest import assert_user_error, cli

#: Metadata of a model trained on T1 MSD-like crops (the bundled msd model's values).
T1_METADATA = {
    "labels_names": ["background", "anterior", "posterior"],
    "num_classes": 3,
    "contrasts": ["T1"],
    "intensity_fingerprint": {"contrast_index": [-0.93, -0.59, -0.18], "images": 208},
    "volume_range_mm3": {"hippocampus": [2424.0, 4145.0]},
}


class Threshold(nn.Module):
    """A deterministic "segmentation": anterior where the z-normalised intensity is above
    ``level``, background elsewhere, posterior nowhere."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(x)
        return torch.cat([zero, 20 * (x - self.level), zero - 50], dim=1)


@pytest.fixture(scope="module")
def threshold_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hsftrain.export.onnx import OnnxOptions, export_onnx

    path = tmp_path_factory.mktemp("contract_model") / "t1_threshold.onnx"
    return export_onnx(
        Threshold(4.0),
        path,
        T1_METADATA,
        options=OnnxOptions(example_shape=(1, 1, 16, 16, 16), verify_shapes=None),
    )


def write(path: Path, image: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(image.astype(np.float32), np.eye(4) if affine is None else affine),
        str(path),
    )
    return path


def rows(table: Path) -> dict[str, list[dict[str, str]]]:
    with table.open(newline="") as f:
        out: dict[str, list[dict[str, str]]] = {}
        for row in csv.DictReader(f):
            out.setdefault(row["subject"], []).append(row)
        return out


def segment(root: Path, model: Path, *extra: str) -> list[str]:
    return [
        "segment",
        f"files.path={root}",
        "files.pattern=*.nii.gz",
        f"model_paths=[{model}]",
        "hardware=cpu",
        "qc=false",
        "segmentation.tta=false",
        *extra,
    ]


def test_t2_crop_given_to_a_t1_model_is_flagged(threshold_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "crops"
    write(root / "t1_crop.nii.gz", anatomy("T1")[0])
    write(root / "t2_crop.nii.gz", anatomy("T2")[0])
    result = cli(*segment(root, threshold_model))
    assert result.code == 0, result.output[-3000:]
    table = rows(root / "volumes.csv")
    t2_flag = table["t2_crop"][0]["flag"]
    assert "crop: contrast index +" in t2_flag and "looks T2-weighted" in t2_flag
    assert "trained on T1" in t2_flag
    assert all(r["flag"] == t2_flag for r in table["t2_crop"])  # every row of the crop
    assert "contrast index" not in table["t1_crop"][0]["flag"]
    assert any("t2_crop" in w and "contrast index" in w for w in result.warnings)
    assert "Traceback" not in result.output
    assert (root / "t2_crop_hippocampus_seg.nii.gz").is_file()  # written all the same


def test_empty_class_is_flagged_and_the_check_can_be_turned_off(
    threshold_model: Path, tmp_path: Path
) -> None:
    root = tmp_path / "crops"
    image = anatomy("T1")[0]
    image[14:22, 18:26, 14:22] = 400  # a bright "hippocampus": anterior, no posterior
    write(root / "one_class.nii.gz", image)
    result = cli(*segment(root, threshold_model))
    assert result.code == 0, result.output[-3000:]
    flag = rows(root / "volumes.csv")["one_class"][0]["flag"]
    assert "crop: no posterior voxel (checks.empty_class)" in flag
    assert "flagged" in result.output
    result = cli(
        *segment(root, threshold_model, "files.overwrite=true", "checks.empty_class=false")
    )
    assert result.code == 0
    assert "checks.empty_class" not in rows(root / "volumes.csv")["one_class"][0]["flag"]


def head_with_hippocampi(path: Path, radii_mm: tuple[float, float]) -> Path:
    """The packaged MNI T1 (a real head), every other voxel (2 mm), with a bright ball of
    ``radii_mm`` (left, right) at each hippocampus (MNI -24/+24, -24, -14 mm)."""
    template = nib.load(str(MNI_TEMPLATE))
    image = np.asarray(template.dataobj, dtype=np.float32)[::2, ::2, ::2]
    affine = template.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    idx = np.indices(image.shape).reshape(3, -1).T
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    for centre, radius in zip(([-24, -24, -14], [24, -24, -14]), radii_mm, strict=True):
        ball = (((world - centre) ** 2).sum(1) <= radius**2).reshape(image.shape)
        image[ball] = 3 * float(image.max())
    return write(path, image, affine)


def test_asymmetric_and_implausible_volumes_are_flagged(
    threshold_model: Path, tmp_path: Path
) -> None:
    """Left 1.4 cm3, right 0.1 cm3 (at 2 mm, a bit more): both sides' rows say so, and the
    right one's volume is far below the model's training range."""
    root = tmp_path / "heads"
    head_with_hippocampi(root / "head.nii.gz", (7.0, 3.0))
    result = cli(*segment(root, threshold_model, "checks.empty_class=false"))
    assert result.code == 0, result.output[-3000:]
    table = rows(root / "volumes.csv")["head"]
    by_side = {r["side"]: r for r in table if r["name"] == "anterior"}
    left, right = float(by_side["left"]["volume_mm3"]), float(by_side["right"]["volume_mm3"])
    assert left > 1000 and 50 < right < 200, (left, right)
    for row in table:
        assert "differ by" in row["flag"] and "checks.max_asymmetry 0.5" in row["flag"]
    assert "right crop: hippocampus" in by_side["right"]["flag"]
    assert "checks.volume_factor" in by_side["right"]["flag"]
    assert "flagged" in result.output
    # the thresholds are settings: off, nothing of this is flagged
    off = ("files.overwrite=true", "checks.max_asymmetry=null", "checks.volume_factor=null")
    result = cli(*segment(root, threshold_model, "checks.empty_class=false", *off))
    assert result.code == 0
    assert all("differ by" not in r["flag"] for r in rows(root / "volumes.csv")["head"])


def test_t2_that_does_not_overlap_its_t1_is_flagged_not_a_bug(
    threshold_model: Path, tmp_path: Path
) -> None:
    root = tmp_path / "subjects"
    write(root / "sub-01_T1w.nii.gz", anatomy("T1")[0])
    far = np.eye(4)
    far[:3, 3] = [0.0, 500.0, 0.0]  # 50 cm away in scanner coordinates
    write(root / "sub-01_T2w.nii.gz", anatomy("T2")[0], far)
    result = cli(
        *segment(root, threshold_model, "checks.empty_class=false"),
        "files.pattern=*_T1w.nii.gz",
        "files.t2_pattern={id}_T2w.nii.gz",
        "multispectral.t2_space=true",
    )
    assert result.code == 0, result.output[-3000:]
    assert "Traceback" not in result.output and not result.errors
    flag = rows(root / "volumes.csv")["sub-01_T1w"][0]["flag"]
    assert "the T2 sub-01_T2w.nii.gz and sub-01_T1w.nii.gz do not overlap" in flag
    assert "segmented from the T1 alone" in flag
    assert (root / "sub-01_T1w_hippocampus_seg.nii.gz").is_file()
    assert not (root / "sub-01_T2w_hippocampus_seg.nii.gz").exists()


@pytest.mark.parametrize(
    "override, words",
    [
        ("checks.max_uncertainty=2", ["checks.max_uncertainty=2", "from 0 to 1", "null"]),
        ("checks.volume_factor=0.5", ["checks.volume_factor=0.5", "from 1"]),
        ("checks.contrast_tolerance=abc", ["checks.contrast_tolerance='abc'"]),
        ("checks.empty_class=3", ["checks.empty_class=3", "true"]),
    ],
)
def test_bad_check_settings_are_one_line(
    override: str, words: list[str], threshold_model: Path, tmp_path: Path
) -> None:
    root = tmp_path / "crops"
    write(root / "a.nii.gz", anatomy("T1")[0])
    assert_user_error(cli(*segment(root, threshold_model, override)), *words)
    assert not (root / "volumes.csv").exists()

"""Cropping subjects to their labels (``crop_margin_mm``), and the ASHS configs built on it."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.config.compose import compose
from hsftrain.data.cache import entry_key, prepare
from hsftrain.data.crop import crop_to_labels, label_box
from hsftrain.data.discovery import discover
from hsftrain.data.nifti import DataError

ASHS = Path(__file__).resolve().parents[3] / "shared" / "data" / "ashs_atlas_test"


def test_label_box_grows_by_millimetres_per_axis() -> None:
    label = np.zeros((20, 10, 20), np.uint8)
    label[8:11, 4:6, 9] = 2
    # 3 mm margin: 2 voxels at 1.5 mm, 1 voxel at 4 mm, 3 voxels at 1 mm
    assert label_box(label, (1.5, 4.0, 1.0), 3.0) == (slice(6, 13), slice(3, 7), slice(6, 13))
    assert label_box(label, (1.5, 4.0, 1.0), 0) == (slice(8, 11), slice(4, 6), slice(9, 10))
    assert label_box(label, (1.0, 1.0, 1.0), 50) == (slice(0, 20), slice(0, 10), slice(0, 20))
    with pytest.raises(DataError, match="no labelled voxel"):
        label_box(np.zeros((4, 4, 4)), (1, 1, 1), 2)
    with pytest.raises(DataError, match="crop_margin_mm"):
        label_box(label, (1, 1, 1), -1)


def test_crop_keeps_the_world_position_of_every_voxel() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 8, 14)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[5:9, 3:5, 6:10] = 1
    affine = np.array([[1.5, 0, 0, -20], [0, 4, 0, 7], [0, 0, 1.5, -3], [0, 0, 0, 1]])
    cropped, cropped_label, moved = crop_to_labels(image, label, affine, 2.0)
    assert cropped.shape == cropped_label.shape == (8, 4, 8)
    assert cropped_label.sum() == label.sum()
    # voxel (0, 0, 0) of the crop is voxel (3, 2, 4) of the image, at the same place
    np.testing.assert_allclose(moved @ [0, 0, 0, 1], affine @ [3, 2, 4, 1])
    assert cropped[0, 0, 0] == image[3, 2, 4]


def _pair(folder: Path, name: str, side_x: int) -> None:
    rng = np.random.default_rng(side_x)
    image = rng.normal(100, 10, (40, 6, 20)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[side_x : side_x + 4, 1:4, 8:12] = 1
    affine = np.diag([1.5, 4.0, 1.5, 1.0])
    nib.save(nib.Nifti1Image(image, affine), folder / f"{name}_img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / f"{name}_lbl.nii.gz")


def test_prepared_subjects_are_cropped_only_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    _pair(folder, "a", 5)
    _pair(folder, "b", 30)
    plain = compose("config", ["datasets=folder", f"datasets.path={folder}"])
    cropped = compose(
        "config",
        [
            "datasets=folder",
            f"datasets.path={folder}",
            "+datasets.datasets.folder.crop_margin_mm=3",
        ],
    )
    whole, crops = discover(plain.datasets), discover(cropped.datasets)
    assert crops.datasets[0].crop_margin_mm == 3.0 and whole.datasets[0].crop_margin_mm is None
    spec, subject = whole.datasets[0], whole.subjects[0]
    from hsftrain.data.cache import PrepareSettings

    settings = PrepareSettings()
    assert entry_key(subject, spec, settings) != entry_key(subject, crops.datasets[0], settings)
    big = prepare(whole, tmp_path / "cache", progress=False)
    small = prepare(crops, tmp_path / "cache", progress=False)
    assert big[0].shape == (40, 6, 20)
    assert small[0].shape == (8, 5, 8)  # 4 + 2 x 2 voxels (1.5 mm), 3 + 1 + 1 (4 mm), 4 + 2 x 2
    image, label = small[1].arrays()
    assert label.sum() == 4 * 3 * 4 and image.shape == (8, 5, 8)
    bad = compose(
        "config",
        [
            "datasets=folder",
            f"datasets.path={folder}",
            "+datasets.datasets.folder.crop_margin_mm=-2",
        ],
    )
    with pytest.raises(DataError, match="crop_margin_mm"):
        discover(bad.datasets)


def test_ashs_configs_compose() -> None:
    ashs = compose("config", ["datasets=ashs_test"])
    entry = ashs.datasets.datasets.ashs
    assert entry.crop_margin_mm == 10 and set(entry.patterns) == {"left", "right"}
    both = compose("config", ["datasets=ashs_msd"])
    assert both.datasets.datasets.msd.ca_type == "ap"
    assert dict(both.datasets.datasets.ashs.labels_names) == dict(entry.labels_names)


@pytest.mark.skipif(not ASHS.is_dir(), reason="shared ASHS atlas test set missing")
def test_ashs_names_come_from_its_snaplabels_file() -> None:
    """Every named class of datasets=ashs_test carries the snaplabels.txt name of the raw
    value mapped to it."""
    snap = {}
    for line in (ASHS / "snaplabels.txt").read_text().splitlines():
        match = re.match(r'^\s*(\d+)\s+.*"(.+)"\s*$', line)
        if match and int(match[1]):
            snap[int(match[1])] = match[2]
    entry = compose("config", ["datasets=ashs_test"]).datasets.datasets.ashs
    for raw, value in entry.labels.items():
        name = entry.labels_names.get(value)
        if raw in snap:
            assert name == snap[raw]
        elif value:
            assert name == f"ASHS_{raw}"  # not named by ASHS: named by its raw value


@pytest.mark.slow
@pytest.mark.skipif(not ASHS.is_dir(), reason="shared ASHS atlas test set missing")
def test_ashs_pairs_become_one_hippocampus_crops(tmp_path: Path) -> None:
    cfg = compose(
        "config",
        [
            "datasets=ashs_test",
            f"datasets.main_path={ASHS}",
            "datasets.datasets.ashs.patterns.left.mri=sub0[12]*_tse.nii.gz",
            "datasets.datasets.ashs.patterns.right.mri=sub0[12]*_tse.nii.gz",
        ],
    )
    found = discover(cfg.datasets)
    assert [s.id.split("/")[1] for s in found.subjects] == ["left", "left", "right", "right"]
    assert sorted(map(sorted, found.groups)) == [[0, 2], [1, 3]]  # sides of one subject together
    prepared = prepare(found, tmp_path / "cache", progress=False)
    for p in prepared:
        assert p.spacing == pytest.approx((1.5625, 4.0, 1.5625), rel=1e-4)
        assert p.shape[1] == 12 and 20 <= p.shape[0] <= 40 and 20 <= p.shape[2] <= 40
        _, label = p.arrays()
        assert set(np.unique(label)) == {0, 1, 2, 3, 4, 5}
    left, right = (np.asarray(p.meta()["affine"])[0, 3] for p in prepared[::2])
    assert left != right  # each side its own crop of the slab

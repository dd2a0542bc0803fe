"""Locating the hippocampi: crop/whole-head rule, boxes, registration on a real head."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.config.compose import ConfigError, compose
from hsftrain.inference.image import Volume, load_volume
from hsftrain.inference.roiloc import (
    Box,
    box_from_points,
    is_crop,
    locate_hippocampi,
    template_box_corners,
    template_path,
)

from .conftest import WHOLEHEAD


def volume(shape=(40, 50, 40), zooms=(1.0, 1.0, 1.0)) -> Volume:
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = (-20, -25, -20)
    return Volume(
        np.zeros(shape, np.float32),
        affine,
        Path("v.nii.gz"),
        affine,
        shape,
        np.array([[0, 1], [1, 1], [2, 1]]),
    )


def test_crop_rule() -> None:
    assert is_crop(volume((40, 50, 40)))  # 40 x 50 x 40 mm
    assert not is_crop(volume((40, 90, 40)))  # one side over 80 mm
    assert not is_crop(volume((40, 50, 40), (2.4, 2.4, 2.4)))  # 96 x 120 x 96 mm
    assert is_crop(volume((200, 200, 200)), mode="crop")
    assert not is_crop(volume((10, 10, 10)), mode="wholehead")
    with pytest.raises(ConfigError, match="roiloc.mode"):
        is_crop(volume(), mode="maybe")


def test_box_from_points_with_margin_and_clipping() -> None:
    vol = volume()
    corners = template_box_corners((0, 0, 0), (10, 10, 10))  # world (-5..5) -> voxels 15..25
    box = box_from_points("left", corners, vol, margin_mm=(2, 2, 2))
    assert box.lo == (13, 18, 13) and box.hi == (28, 33, 28)
    assert box.shape == (15, 15, 15)
    np.testing.assert_allclose(box.affine(vol.affine)[:3, 3], [-7, -7, -7])
    edge = box_from_points("right", template_box_corners((18, 0, 0), (10, 10, 10)), vol)
    assert edge.hi[0] == 40  # clipped to the image
    with pytest.raises(ValueError, match="outside"):
        box_from_points("left", template_box_corners((500, 0, 0), (10, 10, 10)), vol)


def test_box_slices() -> None:
    box = Box("left", (1, 2, 3), (4, 6, 8))
    assert np.zeros((10, 10, 10))[box.slices].shape == box.shape == (3, 4, 5)


def test_the_packaged_template_and_its_licence(tmp_path: Path) -> None:
    path = template_path()
    assert path.name == "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz" and path.is_file()
    image = nib.load(str(path))
    assert image.shape == (197, 233, 189) and np.allclose(image.header.get_zooms(), 1.0)
    notice = (path.parent / "README.md").read_text()
    assert "Copyright (C) 1993-2009 Louis Collins" in notice and "Licence" in notice
    with pytest.raises(ConfigError, match="roiloc.template"):
        template_path(str(tmp_path / "absent.nii.gz"))


@pytest.mark.slow
@pytest.mark.skipif(not WHOLEHEAD.is_dir(), reason="shared whole-head data missing")
def test_boxes_contain_the_hippocampi_of_a_real_head() -> None:
    """norm.mgz + FreeSurfer aseg: label 17 = left, 53 = right hippocampus."""
    vol = load_volume(WHOLEHEAD / "norm.mgz")
    aseg_volume = load_volume(WHOLEHEAD / "aparc.a2009s+aseg.mgz")  # same grid
    np.testing.assert_allclose(aseg_volume.affine, vol.affine)
    aseg = aseg_volume.array.astype(np.int32)
    cfg = compose("segment", []).roiloc
    start = time.perf_counter()
    boxes = {b.side: b for b in locate_hippocampi(vol, cfg)}
    seconds = time.perf_counter() - start
    assert seconds < 30
    for side, label in (("left", 17), ("right", 53)):
        inside = aseg[boxes[side].slices] == label
        total = int((aseg == label).sum())
        assert total > 3000
        assert inside.sum() / total >= 0.95, (side, inside.sum(), total, boxes[side])
        other = 53 if label == 17 else 17
        assert (aseg[boxes[side].slices] == other).sum() / total < 0.05  # the right side
        assert max(boxes[side].shape) <= 80  # a crop, not half the head


@pytest.mark.slow
def test_boxes_follow_a_moved_template(tmp_path: Path) -> None:
    """The real MNI template given a rotated, scaled and shifted header (offline, no shared
    data): registration must recover the move, so each box covers the voxels where the
    template's hippocampus centre lies."""
    template = nib.load(str(template_path()))
    theta = np.deg2rad(12.0)
    move = np.eye(4)
    move[:3, :3] = 1.05 * np.array(
        [[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]]
    )
    move[:3, 3] = (12.0, -10.0, 8.0)
    path = tmp_path / "moved_head.nii.gz"
    data = np.asarray(template.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(data, move @ template.affine), str(path))
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array, data)  # already RAS: same voxels as the template
    cfg = compose("segment", []).roiloc
    boxes = {b.side: b for b in locate_hippocampi(vol, cfg)}
    inv = np.linalg.inv(template.affine)
    for side in ("left", "right"):
        centre_mm = np.asarray(cfg.centers_mm[side], dtype=np.float64)
        centre_vox = inv[:3, :3] @ centre_mm + inv[:3, 3]
        box = boxes[side]
        box_centre = (np.asarray(box.lo) + np.asarray(box.hi) - 1) / 2
        error_mm = np.abs(box_centre - centre_vox) * vol.zooms
        assert (error_mm <= 4.0).all(), (side, centre_vox, box, error_mm)
        assert max(box.shape) <= 80
    assert boxes["left"].lo[0] < boxes["right"].lo[0]  # RAS: left has smaller x


def test_registration_problem_thresholds() -> None:
    from hsftrain.inference.roiloc import Registration, registration_problem

    cfg = compose("segment", []).roiloc
    assert registration_problem(Registration(None, 0.5, (1.1, 1.0, 0.9)), cfg) == ""
    assert "roiloc.min_quality" in registration_problem(Registration(None, 0.01, (1, 1, 1)), cfg)
    assert "scaled by 2.40" in registration_problem(Registration(None, 0.5, (2.4, 1, 1)), cfg)
    off = {"min_quality": 0, "max_scale": 0}
    assert registration_problem(Registration(None, 0.0, (3, 1, 1)), off) == ""
    with pytest.raises(ConfigError, match="roiloc.max_scale"):
        registration_problem(Registration(None, 0.5, (1, 1, 1)), {"max_scale": 0.5})

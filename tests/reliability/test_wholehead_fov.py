"""Whole-head crops sized to the model's training field of view (``field_of_view_mm``).

A model trained on tight crops, given the larger template box of a whole head, labels
structures it never saw; its crops are made the size of its training crops instead. The
head here is the packaged MNI template at 2 mm (offline, registration in about a second);
the models are tiny random networks whose ONNX metadata says what they were trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.config.compose import ConfigError
from hsftrain.inference.boxes import crop_extent, fov_box, model_field_of_view
from hsftrain.inference.roiloc import template_path
from tests.inference.test_roiloc import volume

from .conftest import Outcome, assert_user_error, cli, files_below

FOV = [36.0, 50.0, 36.0]
NO_SHIFT = ["roiloc.model_fov_margin_mm=[0,0,0]", "roiloc.model_fov_shift_mm=[0,0,0]"]


def _model(path: Path, field_of_view: object | None) -> Path:
    """A tiny 3-class ONNX model, with ``field_of_view_mm`` in its metadata when given."""
    import torch

    from hsftrain.export.onnx import OnnxOptions, export_onnx
    from hsftrain.models import build_model

    torch.manual_seed(0)
    net = build_model(
        "ResidualUNet3D", dict(in_channels=1, out_channels=3, f_maps=4, num_levels=2)
    ).eval()
    meta: dict[str, object] = {
        "labels_names": ["background", "anterior", "posterior"],
        "num_classes": 3,
        "ca_mode": "",
    }
    if field_of_view is not None:
        meta["field_of_view_mm"] = field_of_view
    return export_onnx(
        net, path, meta, options=OnnxOptions(example_shape=(1, 1, 16, 16, 16), verify_shapes=None)
    )


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MNI template averaged to 2 mm: a whole head (196 x 232 x 188 mm)."""
    template = nib.load(str(template_path()))
    data = np.asarray(template.dataobj, dtype=np.float32)[:196, :232, :188]
    small = data.reshape(98, 2, 116, 2, 94, 2).mean(axis=(1, 3, 5))
    affine = template.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] += 0.5 * np.diag(template.affine)[:3]  # centre of each 2 mm block
    folder = tmp_path_factory.mktemp("head")
    nib.save(nib.Nifti1Image(small, affine), str(folder / "head.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fov_models")
    return {
        "fov": _model(folder / "fov.onnx", FOV),
        "none": _model(folder / "none.onnx", None),
        "bad": _model(folder / "bad.onnx", "wide"),
    }


def _run(head: Path, model: Path, out: Path, *extra: str) -> Outcome:
    """``hsftrain segment`` of the head with ``model`` into ``out``."""
    return cli(
        "segment",
        f"files.path={head}",
        "files.pattern=head.nii.gz",
        f"files.output_dir={out}",
        f"model_paths=[{model}]",
        *extra,
    )


def _segment(head: Path, model: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    """Segment the head; each side's crop box as ``[lo, hi)`` voxel bounds (2, 3)."""
    result = _run(head, model, out, "segmentation.tta=false", "qc=false", *extra)
    assert result.code == 0, result.output[-3000:]
    full = nib.load(str(head / "head.nii.gz")).affine
    boxes = {}
    for side in ("left", "right"):
        crop = nib.load(str(out / f"head_hippocampus_seg_crop_{side}.nii.gz"))
        lo = np.round(np.linalg.inv(full) @ crop.affine[:, 3])[:3]
        boxes[side] = np.array([lo, lo + crop.shape])
    return boxes


def test_whole_head_crops_take_the_model_field_of_view(
    head: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    template_box = _segment(head, models["fov"], tmp_path / "off", "roiloc.model_fov=false")
    sized = _segment(head, models["fov"], tmp_path / "fov", *NO_SHIFT)
    grown = _segment(head, models["fov"], tmp_path / "grown", "roiloc.model_fov_shift_mm=[0,0,0]")
    for side in ("left", "right"):
        # 36 x 50 x 36 mm at 2 mm, centred where the template box is centred
        assert (np.diff(sized[side], axis=0)[0] == [18, 25, 18]).all(), sized[side]
        assert (np.diff(template_box[side], axis=0)[0] > [18, 25, 18]).all()
        centre = sized[side].mean(axis=0)
        assert np.abs(centre - template_box[side].mean(axis=0)).max() <= 1.0
        # the default margin: 2 mm (one voxel) more on every side
        assert (np.diff(grown[side], axis=0)[0] == [20, 27, 20]).all(), grown[side]
    # a model that does not say keeps the template box
    unsaid = _segment(head, models["none"], tmp_path / "none")
    for side in ("left", "right"):
        np.testing.assert_array_equal(unsaid[side], template_box[side])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("roiloc.model_fov_margin_mm=[-1,0,0]", "roiloc.model_fov_margin_mm"),
        ("roiloc.model_fov_margin_mm=[1,2]", "roiloc.model_fov_margin_mm"),
        ("roiloc.model_fov=maybe", "roiloc.model_fov"),
        ("roiloc.model_fov_shift_mm=[0,0,up]", "roiloc.model_fov_shift_mm"),
    ],
)
def test_bad_field_of_view_settings_are_one_line(
    head: Path, models: dict[str, Path], tmp_path: Path, override: str, key: str
) -> None:
    out = tmp_path / "out"
    assert_user_error(_run(head, models["fov"], out, override), key)
    assert not files_below(out)


def test_a_malformed_model_field_of_view_is_one_line_before_any_subject(
    head: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = _run(head, models["bad"], out)
    assert_user_error(result, "bad.onnx", "field_of_view_mm", "roiloc.model_fov=false")
    assert not files_below(out)


def test_fov_box_is_centred_and_kept_inside_the_image(caplog: pytest.LogCaptureFixture) -> None:
    vol = volume((60, 60, 60))  # 1 mm, voxel (i, j, k) at (i - 20, j - 25, k - 20) mm
    box = fov_box("left", (10, 5, 10), vol, (35, 50, 36))
    assert box.shape == (35, 50, 36)
    np.testing.assert_allclose((np.add(box.lo, box.hi) - 1) / 2, (30, 30, 30), atol=0.5)
    with caplog.at_level(logging.WARNING, logger="hsftrain"):
        edge = fov_box("right", (35, -20, 10), vol, (20, 20, 20))  # voxel (55, 5, 30)
    assert edge.shape == (20, 20, 20) and edge.hi[0] == 60 and edge.lo[1] == 0
    assert "moved inside the image border" in caplog.text
    with pytest.raises(ValueError, match="outside"):
        fov_box("left", (500, 5, 10), vol, (20, 20, 20))


class _Engine:
    def __init__(self, name: str, metadata: dict[str, object]) -> None:
        self.path = Path(name)
        self.metadata = metadata


def test_models_field_of_view_and_when_it_applies(caplog: pytest.LogCaptureFixture) -> None:
    one = _Engine("a.onnx", {"field_of_view_mm": [35, 50, 36]})
    other = _Engine("b.onnx", {"field_of_view_mm": [40, 48, 36]})
    assert model_field_of_view([one]) == (35.0, 50.0, 36.0)
    with caplog.at_level(logging.WARNING, logger="hsftrain"):
        assert model_field_of_view([one, other]) == (40.0, 50.0, 36.0)  # largest per axis
    assert "different sizes" in caplog.text
    assert model_field_of_view([one, _Engine("c.onnx", {})]) is None  # one does not say
    with pytest.raises(ConfigError, match="d.onnx"):
        model_field_of_view([_Engine("d.onnx", {"field_of_view_mm": [35, -1, 36]})])
    cfg = {"model_fov": True, "model_fov_margin_mm": [2, 2, 2], "crop_max_fov_mm": 80}
    np.testing.assert_allclose(crop_extent(cfg, (35, 50, 36)), (39, 54, 40))  # type: ignore[arg-type]
    assert crop_extent(cfg, (200, 200, 200)) is None  # trained on whole heads: template box
    assert crop_extent({**cfg, "model_fov": False}, (35, 50, 36)) is None
    assert crop_extent(cfg, None) is None

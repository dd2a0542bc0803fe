"""int8 static quantization: calibration sources, pre-processing, closeness to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from hsftrain.compression.quantize import (
    QuantConfig,
    VolumeCalibrationReader,
    compare_models,
    preprocess,
    quantize_int8,
)
from hsftrain.config.compose import ConfigError
from hsftrain.core.onnx_metadata import read_metadata
from hsftrain.export.api import export_checkpoint
from hsftrain.export.calibration import glob_images
from hsftrain.export.onnx import OnnxOptions, export_onnx
from tests.conftest import tiny_net


def test_preprocess_like_training_and_inference(phantoms: Path) -> None:
    """Calibration inputs are what ``hsftrain segment`` feeds an hsftrain model: the
    canonical crop, z-normalised, padded with its minimum to a multiple of 8."""
    from hsftrain.inference.image import load_volume
    from hsftrain.inference.preprocess import pad_to_multiple, z_normalize

    path = sorted(phantoms.glob("*_img.nii.gz"))[0]
    x = preprocess(path)
    assert x.shape == (1, 1, 16, 24, 16)  # 16x20x16 padded to a multiple of 8
    assert x.dtype == np.float32
    image = z_normalize(load_volume(path).array)
    expected, crop = pad_to_multiple(image, 8, float(image.min()))
    np.testing.assert_array_equal(x[0, 0], expected)
    assert crop[1] == slice(2, 22)  # 4 voxels of padding along Y, split evenly


def test_reader_yields_each_image_once_then_rewinds(phantoms: Path) -> None:
    paths = glob_images(phantoms, "*_img.nii.gz")[:2]
    reader = VolumeCalibrationReader(paths)
    batches = [reader.get_next(), reader.get_next(), reader.get_next()]
    assert batches[2] is None
    assert all(b["cropped_hippocampus"].shape == (1, 1, 16, 24, 16) for b in batches[:2])
    reader.rewind()
    assert reader.get_next() is not None


def test_bad_quantization_keys() -> None:
    with pytest.raises(ConfigError, match="calibration.method"):
        QuantConfig.from_mappings({}, {"method": "magic"})
    with pytest.raises(ConfigError, match="quantization.activations"):
        QuantConfig.from_mappings({"activations": "int4"}, {})
    with pytest.raises(ConfigError, match="quantize="):
        export_checkpoint("x.ckpt", quantize="int4")


def test_int8_model_runs_and_stays_close(tmp_path: Path, phantoms: Path) -> None:
    fp32 = export_onnx(
        tiny_net(seed=3),
        tmp_path / "m.onnx",
        {"num_classes": 3},
        options=OnnxOptions(verify_shapes=None),
    )
    images = glob_images(phantoms, "*_img.nii.gz")
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", images[:4], QuantConfig(num_images=4))
    model = onnx.load(str(int8))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = read_metadata(int8)
    assert meta["quantization"] == "int8"
    assert meta["num_classes"] == 3  # fp32 metadata kept
    assert meta["calibration_images"] == 4
    check = compare_models(fp32, int8, [preprocess(p) for p in images[4:]])
    assert check.agreement > 0.9
    assert check.mean_abs_diff < 0.02


def _differently_sized(folder: Path, n: int = 3) -> list[Path]:
    """``n`` real MSD crops whose network inputs all differ in shape."""
    picked: dict[tuple[int, ...], Path] = {}
    for path in glob_images(folder, "*_img.nii.gz"):
        picked.setdefault(preprocess(path).shape, path)
        if len(picked) == n:
            return list(picked.values())
    raise AssertionError(f"fewer than {n} input shapes in {folder}")


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_every_method_calibrates_on_differently_sized_real_crops(
    tmp_path: Path, sample_dir: Path, method: str
) -> None:
    """Real MSD crops differ in size; the histogram methods stack activations."""
    images = _differently_sized(sample_dir)
    fp32 = export_onnx(
        tiny_net(seed=1),
        tmp_path / "m.onnx",
        {"num_classes": 3},
        options=OnnxOptions(verify_shapes=None),
    )
    calib = QuantConfig(num_images=3, method=method)
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", images, calib)
    assert read_metadata(int8)["calibration_method"] == method
    check = compare_models(fp32, int8, [preprocess(p) for p in images[:1]])
    assert check.agreement > 0.9


def test_reader_pads_every_volume_to_one_shape(sample_dir: Path) -> None:
    images = _differently_sized(sample_dir)
    reader = VolumeCalibrationReader(images)
    batches = [reader.get_next() for _ in images]
    shapes = {b["cropped_hippocampus"].shape for b in batches}  # type: ignore[index]
    assert len(shapes) == 1
    expected = tuple(max(preprocess(p).shape[i] for p in images) for i in range(5))
    assert shapes == {expected}
    first = preprocess(images[0])
    padded = batches[0]["cropped_hippocampus"]  # type: ignore[index]
    assert padded.min() == pytest.approx(first.min())  # padded with the image's minimum

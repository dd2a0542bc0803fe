"""int8 static quantization: calibration sources, pre-processing, closeness to fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from hsftrain.config import ConfigError
from hsftrain.export.api import export_checkpoint
from hsftrain.export.onnx import export_onnx, read_metadata
from hsftrain.export.quantize import (
    QuantConfig,
    VolumeCalibrationReader,
    compare_models,
    glob_images,
    pick,
    preprocess,
    quantize_int8,
    run_training_images,
)
from tests.export.conftest import tiny_net


def test_preprocess_like_training(phantoms: Path) -> None:
    import torch

    from hsftrain.data.nifti import load_volume
    from hsftrain.data.transforms import postprocess

    path = sorted(phantoms.glob("*_img.nii.gz"))[0]
    x = preprocess(path)
    assert x.shape == (1, 1, 16, 24, 16)  # 16x20x16 padded to a multiple of 8
    assert x.dtype == np.float32
    data, _ = load_volume(path, np.float32, canonical=True)
    image = torch.from_numpy(data)[None]
    expected, _ = postprocess(image, torch.zeros(data.shape, dtype=torch.long), None)
    np.testing.assert_array_equal(x[0], expected.numpy())


def test_reader_yields_each_image_once_then_rewinds(phantoms: Path) -> None:
    paths = glob_images(phantoms, "*_img.nii.gz")[:2]
    reader = VolumeCalibrationReader(paths)
    batches = [reader.get_next(), reader.get_next(), reader.get_next()]
    assert batches[2] is None
    assert all(b["cropped_hippocampus"].shape == (1, 1, 16, 24, 16) for b in batches[:2])
    reader.rewind()
    assert reader.get_next() is not None


def test_run_training_images_follow_split(tiny_ckpt: Path) -> None:
    from hsftrain.training.checkpoint import read_checkpoint

    _, info = read_checkpoint(tiny_ckpt)
    images = run_training_images(tiny_ckpt, info.config)
    train_ids = json.loads((tiny_ckpt.parent.parent / "split.json").read_text())["train"]
    assert len(images) == len(set(train_ids)) > 0
    assert all(p.is_file() and p.name.endswith("_img.nii.gz") for p in images)


def test_run_training_images_without_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibration.path"):
        run_training_images(tmp_path / "checkpoints" / "x.ckpt", {})


def test_pick_is_even_and_bounded() -> None:
    items = [Path(str(i)) for i in range(10)]
    assert pick(items, 3) == [Path("0"), Path("4"), Path("9")]  # linspace 0, 4.5, 9 rounded
    assert pick(items, 20) == items


def test_bad_quantization_keys() -> None:
    with pytest.raises(ConfigError, match="calibration.method"):
        QuantConfig.from_mappings({}, {"method": "magic"})
    with pytest.raises(ConfigError, match="quantization.activations"):
        QuantConfig.from_mappings({"activations": "int4"}, {})
    with pytest.raises(ConfigError, match="quantize="):
        export_checkpoint("x.ckpt", quantize="int4")


def test_int8_model_runs_and_stays_close(tmp_path: Path, phantoms: Path) -> None:
    fp32 = export_onnx(
        tiny_net(seed=3), tmp_path / "m.onnx", {"num_classes": 3}, verify_shapes=None
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
    """Issue 14: real MSD crops differ in size; the histogram methods stack activations."""
    images = _differently_sized(sample_dir)
    fp32 = export_onnx(
        tiny_net(seed=1), tmp_path / "m.onnx", {"num_classes": 3}, verify_shapes=None
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

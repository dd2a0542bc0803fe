"""``hsftrain export`` end to end through the typer app on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hsftrain.cli import app
from hsftrain.onnx_metadata import read_metadata


def test_cli_export_int8(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.int8.onnx"
    result = CliRunner().invoke(
        app,
        [
            "export",
            f"ckpt={tiny_ckpt}",
            f"out={out}",
            "quantize=int8",
            "calibration.num_images=3",
            # a 1-epoch model is unsure of most voxels, so its argmax flips easily
            "verify.min_agreement=0.8",
        ],
    )
    assert result.exit_code == 0, result.output
    fp32 = tmp_path / "tiny.onnx"
    assert out.is_file() and fp32.is_file()
    meta = read_metadata(out)
    assert meta["quantization"] == "int8"
    assert meta["calibration_images"] == 3
    assert meta["labels_names"] == read_metadata(fp32)["labels_names"]
    assert "quantization" not in read_metadata(fp32)
    assert not list(Path.cwd().glob("sym_shape_infer_temp*"))


def test_cli_export_missing_checkpoint(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", f"ckpt={tmp_path / 'nope.ckpt'}"])
    assert result.exit_code == 1


def test_cli_export_bad_quantize(tiny_ckpt: Path) -> None:
    result = CliRunner().invoke(app, ["export", f"ckpt={tiny_ckpt}", "quantize=int4"])
    assert result.exit_code == 1


REFERENCE = Path(__file__).resolve().parents[3] / "shared/data/hsf_train_reference"


@pytest.mark.skipif(
    not (REFERENCE / "arunet_f8_random.ckpt").is_file(), reason="no ../shared hsf_train reference"
)
def test_cli_exports_an_hsf_train_checkpoint(tmp_path: Path) -> None:
    """An hsf_train (HSF) checkpoint exports to ONNX with HSF's class names, and ONNX
    Runtime reproduces hsf_train's reference softmax output."""
    import numpy as np
    import onnxruntime as ort

    out = tmp_path / "hsf.onnx"
    ckpt = REFERENCE / "arunet_f8_random.ckpt"
    result = CliRunner().invoke(app, ["export", f"ckpt={ckpt}", f"out={out}"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["labels_names"] == ["background", "DG", "CA1", "CA2", "CA3", "SUB"]
    assert meta["model_name"] == "HSFResidualUNet3D" and meta["f_maps"] == 8
    io = np.load(REFERENCE / "arunet_f8_random_io.npz")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"cropped_hippocampus": io["input"]})
    np.testing.assert_allclose(probs, io["output"], atol=1e-4, rtol=0)

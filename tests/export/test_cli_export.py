"""``hsftrain export`` end to end through the typer app on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.core.onnx_metadata import read_metadata


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
    fp32 = tmp_path / "tiny.int8.fp32.onnx"
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


def test_cli_export_half_weights(tiny_ckpt: Path, tmp_path: Path) -> None:
    """weights=float16: half the weight bytes, same metadata, probabilities within 5e-3 of
    the float32 export (checked against PyTorch inside the export too)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    full, half = tmp_path / "full.onnx", tmp_path / "half.onnx"
    for out, weights in ((full, "float32"), (half, "float16")):
        result = CliRunner().invoke(
            app, ["export", f"ckpt={tiny_ckpt}", f"out={out}", f"weights={weights}"]
        )
        assert result.exit_code == 0, result.output

    def weight_bytes(path: Path) -> int:
        return sum(len(i.raw_data) for i in onnx.load(str(path)).graph.initializer)

    assert weight_bytes(half) < 0.55 * weight_bytes(full)
    assert read_metadata(half)["labels_names"] == read_metadata(full)["labels_names"]
    big = [i for i in onnx.load(str(half)).graph.initializer if np.prod(i.dims) >= 16]
    assert big and {i.data_type for i in big} == {onnx.TensorProto.FLOAT16}
    x = np.random.default_rng(0).standard_normal((1, 1, 24, 32, 24)).astype(np.float32)
    outs = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
            None, {"cropped_hippocampus": x}
        )[0]
        for p in (full, half)
    ]
    assert outs[1].dtype == np.float32 and np.abs(outs[0] - outs[1]).max() < 5e-3
    bad = CliRunner().invoke(
        app, ["export", f"ckpt={tiny_ckpt}", "weights=float16", "quantize=int8"]
    )
    assert bad.exit_code == 1 and "weights=float16" in bad.output

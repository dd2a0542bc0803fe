"""``hsftrain export`` end to end through the typer app on a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from hsftrain.cli import app
from hsftrain.export.onnx import read_metadata


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

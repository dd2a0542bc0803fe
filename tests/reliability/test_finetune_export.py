"""``hsftrain finetune`` and ``hsftrain export``: bad checkpoints and output paths are one
line and write nothing; a model with NaN/Inf weights is never exported or fine-tuned."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import assert_no_temporaries, assert_user_error, cli, files_below, train_args


def _finetune(phantoms: Path, out: Path, pretrained: Path | str, *extra: str) -> list[str]:
    return [
        *train_args(phantoms, out, "run_name=ft", *extra),
        f"finetuning.pretrained={pretrained}",
        "models.use_forgiving_loss=true",
    ]


def test_finetune_from_a_missing_checkpoint(phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = cli("finetune", *_finetune(phantoms, out, tmp_path / "absent.ckpt"))
    assert_user_error(result, "absent.ckpt")
    assert not out.exists()


def test_finetune_from_a_diverged_checkpoint(
    phantoms: Path, tmp_path: Path, nan_ckpt: Path
) -> None:
    out = tmp_path / "runs"
    result = cli("finetune", *_finetune(phantoms, out, nan_ckpt))
    assert_user_error(result, "diverged.ckpt", "NaN/Inf weights")
    assert not out.exists()


def test_finetune_from_a_file_that_is_not_a_checkpoint(phantoms: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00" * 100)
    out = tmp_path / "runs"
    result = cli("finetune", *_finetune(phantoms, out, junk))
    assert_user_error(result, "junk.ckpt")
    assert not out.exists()


@pytest.mark.parametrize(
    "override, words",
    [
        ("finetuning.unfreeze_frequency=-1", ["finetuning.unfreeze_frequency"]),
        ("finetuning.mode=sideways", ["finetuning.mode", "encoder, decoder"]),
        ("finetuning.out_channels=1", ["finetuning.out_channels"]),
    ],
)
def test_finetune_invalid_setting(
    override: str, words: list[str], phantoms: Path, tmp_path: Path, trained: Path
) -> None:
    out = tmp_path / "runs"
    ckpt = trained / "checkpoints" / "last.ckpt"
    result = cli("finetune", *_finetune(phantoms, out, ckpt, override))
    assert_user_error(result, *words)
    assert not out.exists()


def test_export_missing_checkpoint(tmp_path: Path) -> None:
    assert_user_error(cli("export", f"ckpt={tmp_path / 'nope.ckpt'}"), "nope.ckpt")
    assert files_below(tmp_path) == set()


def test_export_checkpoint_that_is_a_folder(trained: Path) -> None:
    assert_user_error(cli("export", f"ckpt={trained}"), "is a folder", "last.ckpt")


def test_export_out_is_a_folder(trained: Path, tmp_path: Path) -> None:
    result = cli("export", f"ckpt={trained / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path}")
    assert_user_error(result, "`out`", "is a folder", "model.onnx")
    assert files_below(tmp_path) == set()


def test_export_out_below_a_file(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    ckpt = trained / "checkpoints" / "last.ckpt"
    result = cli("export", f"ckpt={ckpt}", f"out={tmp_path / 'f' / 'm.onnx'}")
    assert_user_error(result, "is a file")


def test_export_unknown_quantization(trained: Path, tmp_path: Path) -> None:
    ckpt = trained / "checkpoints" / "last.ckpt"
    result = cli("export", f"ckpt={ckpt}", "quantize=int4", f"out={tmp_path / 'm.onnx'}")
    assert_user_error(result, "quantize")
    assert files_below(tmp_path) == set()


def test_export_of_a_diverged_model_writes_nothing(nan_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = cli("export", f"ckpt={nan_ckpt}", f"out={out}")
    assert_user_error(result, "NaN/Inf weights", "diverged.ckpt")
    assert files_below(tmp_path) == set()
    assert_no_temporaries(nan_ckpt.parent)


def test_export_of_a_non_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_text("hello")
    result = cli("export", f"ckpt={junk}", f"out={tmp_path / 'm.onnx'}")
    assert_user_error(result, "junk.ckpt")
    assert files_below(tmp_path) == {"junk.ckpt"}

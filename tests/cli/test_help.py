"""``--help`` of every config command lists its keys, defaults and descriptions."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.cli.help import keys_text


@pytest.mark.parametrize(
    "command, keys",
    [
        ("export", ["quantize = null", "calibration.method = minmax", "ckpt = null"]),
        ("evaluate", ["pred = null", "ref = null", "id_regex = null"]),
        ("segment", ["files.path = ???", "model_paths = null", "segmentation.tta = true"]),
        ("train", ["models.hparams.f_maps = 64", "lightning.max_epochs = 100", "resume = null"]),
        ("finetune", ["finetuning.pretrained = ", "finetuning.mode = decoder"]),
    ],
)
def test_help_lists_keys(command: str, keys: list[str]) -> None:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    for key in keys:
        assert key in result.output
    assert "Keys (override with key=value" in result.output


def test_keys_text_fits_80_columns() -> None:
    for config in ("config", "segment", "export", "evaluate"):
        assert max(len(line) for line in keys_text(config, 80).splitlines()) <= 80

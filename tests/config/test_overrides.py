"""Overrides as users type them, and strict keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.config.compose import ConfigError, compose
from hsftrain.config.overrides import is_path_key, path_value, prepare

HOME = os.path.expanduser("~")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("~/data", f"'{HOME}/data'"),
        ("hippocampus_2[0-9]*.nii.gz", "'hippocampus_2[0-9]*.nii.gz'"),
        ("my data/x y", "'my data/x y'"),
        ("runs/x", "runs/x"),
        ("null", "null"),
        ("'~/q'", f"'{HOME}/q'"),
        ("[~/a.onnx,b.onnx]", f"['{HOME}/a.onnx','b.onnx']"),
        ("[bad_*, 'sub-07/**']", "[bad_*, 'sub-07/**']"),
        ("{url: 'http://x', xxh3_64: ab}", "{url: 'http://x', xxh3_64: ab}"),
        ("it's", "'it\\'s'"),
    ],
)
def test_path_values_are_taken_as_typed(value: str, expected: str) -> None:
    assert path_value(value) == expected


def test_path_keys() -> None:
    assert is_path_key("files.path") and is_path_key("files.pattern") and is_path_key("ckpt")
    assert is_path_key("datasets.datasets.x.patterns.t1.mri") and is_path_key("+resume")
    assert not is_path_key("models.lr") and not is_path_key("labels")


def test_documented_forms_compose() -> None:
    cfg = compose(
        "segment",
        [
            "files.path=~/data",
            "files.pattern=hippocampus_2[0-9]*.nii.gz",
            "files.output_dir=~/my results",
            "model_paths=[~/a.onnx,/x/b.onnx]",
        ],
    )
    assert cfg.files.path == f"{HOME}/data"
    assert cfg.files.pattern == "hippocampus_2[0-9]*.nii.gz"
    assert cfg.files.output_dir == f"{HOME}/my results"
    assert list(cfg.model_paths) == [f"{HOME}/a.onnx", "/x/b.onnx"]
    folder = compose("config", ["datasets=folder", "datasets.path=~/my_segmentations"])
    assert folder.datasets.path == f"{HOME}/my_segmentations"


def test_unparsable_override_names_the_argument_and_the_quoting() -> None:
    with pytest.raises(ConfigError) as err:
        prepare(["labels={1: a"])
    message = str(err.value)
    assert "labels={1: a" in message and "quote" in message and "\n" not in message


@pytest.mark.parametrize("command", ["train", "export", "segment", "evaluate", "finetune"])
def test_unknown_keys_are_errors_for_every_command(command: str) -> None:
    config = {"train": "config", "finetune": "config"}.get(command, command)
    for typo in ("quantise=int8", "+quantise=int8", "++quantise=int8"):
        with pytest.raises(ConfigError, match="`quantise` is not a key of hsftrain"):
            compose(config, [typo])


def test_typo_gets_the_close_key_not_a_plus() -> None:
    result = CliRunner().invoke(app, ["export", "ckpt=x.ckpt", "quantise=int8"])
    assert result.exit_code == 1
    assert "quantize" in result.output and "+quantise" not in result.output


def test_new_entries_of_open_mappings_and_trainer_arguments_are_accepted() -> None:
    cfg = compose("config", ["lightning.gradient_clip_val=0.5"])
    assert cfg.lightning.gradient_clip_val == 0.5
    with pytest.raises(ConfigError, match="lightning.not_a_trainer_arg"):
        compose("config", ["lightning.not_a_trainer_arg=1"])
    cfg = compose("segment", ["segmentation=custom", "+segmentation.models.mine={path: /x.onnx}"])
    assert cfg.segmentation.models.mine.path == "/x.onnx"


def test_cli_accepts_home_and_brackets(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["segment", "files.path=~/data", "files.pattern=a[0-9]*.nii.gz", "--cfg", "job"]
    )
    assert result.exit_code == 0, result.output
    assert f"path: {HOME}/data" in result.output and "pattern: a[0-9]*.nii.gz" in result.output

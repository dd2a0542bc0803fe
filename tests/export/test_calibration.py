"""hsftrain.export.calibration: the images a model is calibrated on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hsftrain.config.compose import ConfigError
from hsftrain.export.calibration import glob_images, pick, run_training_images


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


def test_glob_images_names_the_keys_when_nothing_matches(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibration.pattern"):
        glob_images(tmp_path, "*.nii.gz")

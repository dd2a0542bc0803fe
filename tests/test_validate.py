"""Up-front configuration checks: every shipped option passes, bad values name the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsftrain.config import ConfigError, compose, group_options
from hsftrain.validate import (
    as_float,
    as_int,
    check_depth,
    check_output_dir,
    check_output_file,
    deepest_voxels,
    max_levels,
    validate_training,
)


@pytest.mark.parametrize("group", ["datasets", "models", "lightning", "logger", "compression"])
def test_every_shipped_option_is_valid(group: str, tmp_path: Path) -> None:
    for option in group_options()[group]:
        overrides = [f"{group}={option}", f"datasets.output_path={tmp_path}"]
        if group == "datasets" and option == "folder":
            overrides.append("datasets.path=x")
        validate_training(compose("config", overrides), finetune=True)


def test_numbers() -> None:
    assert as_int("k", 2) == as_int("k", 2.0) == as_int("k", "2") == 2
    for bad in (True, 2.5, "two", None):
        with pytest.raises(ConfigError, match="`k`"):
            as_int("k", bad, 1)
    with pytest.raises(ConfigError, match=">= 1"):
        as_int("k", 0, 1)
    assert as_float("x", "1e-3", 0, low_open=True) == 1e-3
    for bad in (0, float("nan"), float("inf"), "x"):
        with pytest.raises(ConfigError, match="finite number > 0"):
            as_float("x", bad, 0, low_open=True)


def test_depth_arithmetic() -> None:
    assert deepest_voxels((16, 20, 16), 5) == 2 and deepest_voxels((16, 20, 16), 6) == 1
    assert max_levels((16, 20, 16)) == 5 and max_levels((36, 50, 36)) == 6
    check_depth(5, [(16, 20, 16)], None)
    check_depth(7, [(8, 8, 8)], (64, 64, 65))  # the patch decides
    with pytest.raises(ConfigError, match="at most 5 levels"):
        check_depth(6, [(40, 40, 40), (16, 20, 16)], None)


def test_output_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "file").write_text("x")
    assert check_output_dir(tmp_path / "new" / "deeper", "k") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing is created
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file", "k")
    with pytest.raises(ConfigError, match="is a file, so no folder"):
        check_output_dir(tmp_path / "file" / "sub", "k")
    with pytest.raises(ConfigError, match="is a folder: give a file name, e.g. out="):
        check_output_file(tmp_path, "out", example="m.onnx")
    monkeypatch.setattr(os, "access", lambda *a: False)
    with pytest.raises(ConfigError, match="not writable"):
        check_output_dir(tmp_path / "x", "k")

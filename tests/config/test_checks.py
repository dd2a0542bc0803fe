"""hsftrain.config.checks: typed config values and output paths; bad values name the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsftrain.config.checks import (
    as_bool,
    as_float,
    as_int,
    check_output_dir,
    check_output_file,
    choice,
)
from hsftrain.config.compose import ConfigError


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
    assert as_bool("b", False) is False
    with pytest.raises(ConfigError, match="`b`='yes': must be true or false"):
        as_bool("b", "yes")
    assert choice(["csv", "tensorboard"])("logger.name", "csv") == "csv"
    with pytest.raises(ConfigError, match="must be one of csv, tensorboard"):
        choice(["csv", "tensorboard"])("logger.name", "wandb")


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

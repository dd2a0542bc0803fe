"""The one reader of dotted keys and the one grammar of device lists, and their callers."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hsftrain.config.compose import compose
from hsftrain.config.keys import (
    ABSENT,
    Devices,
    KeyReader,
    get_value,
    parse_devices,
    value_as_written,
)
from hsftrain.core.errors import ConfigError
from hsftrain.inference.settings import settings_from_config
from hsftrain.training.validate import validate_training

CFG = {"a": "???", "b": {"c": "???", "d": "${nope}", "e": [1, 2], "f": {"g": 3}}}


def test_get_value_reads_plain_values_of_configs_and_mappings() -> None:
    cfg = OmegaConf.create(CFG)
    assert get_value(cfg, "b.e") == [1, 2] and get_value(cfg, "b.f") == {"g": 3}
    assert get_value(CFG, "b.f.g") == 3
    assert get_value(cfg, "b.zz") is ABSENT and get_value(cfg, "zz.y", 7) == 7


def test_get_value_names_the_key_of_a_missing_value_or_broken_interpolation() -> None:
    cfg = OmegaConf.create(CFG)
    with pytest.raises(ConfigError, match=r"^`b\.c`: Missing mandatory value"):
        get_value(cfg, "b.c")
    with pytest.raises(ConfigError, match=r"^`b\.d`: Interpolation key 'nope' not found$"):
        get_value(cfg, "b.d", missing="default")
    assert get_value(cfg, "a.x", 5, missing="default") == 5


def test_segment_reads_missing_values_as_defaults_and_comparisons_read_text() -> None:
    cfg = OmegaConf.create(CFG)
    read = KeyReader(cfg)
    assert read("a") is None and read("b.c", 4) == 4 and read("b.f.g") == 3
    assert value_as_written(cfg, "b.d") == "${nope}" and value_as_written(cfg, "a") is None


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (None, Devices(auto=True)),
        ("auto", Devices(auto=True)),
        (2, Devices(count=2)),
        ("2", Devices(count=2)),
        (-1, Devices(count=-1)),
        ([0, 1], Devices(ids=(0, 1))),
        ("0,1", Devices(ids=(0, 1))),
        ("1,", Devices(ids=(1,))),
    ],
)
def test_parse_devices_one_grammar(value: object, parsed: Devices) -> None:
    assert parse_devices(value) == parsed


@pytest.mark.parametrize("value", [True, "word", [], [True], 1.5, "x,y", ",", ["a"]])
def test_parse_devices_refuses_anything_else(value: object) -> None:
    with pytest.raises(ValueError):
        parse_devices(value)


@pytest.mark.parametrize(
    ("value", "ids"),
    [("null", None), ("auto", None), ("1", [1]), ("[0,1]", [0, 1]), ("'0,1'", [0, 1])],
)
def test_segment_devices_are_gpu_ids(tmp_path: Path, value: str, ids: list[int] | None) -> None:
    base = ["segmentation=single_fast", f"files.path={tmp_path}", "files.pattern=*.nii.gz"]
    settings = settings_from_config(compose("segment", [*base, f"hardware.devices={value}"]))
    assert settings.devices == ids


@pytest.mark.parametrize("value", ["two", "[-1]", "true", "[]"])
def test_segment_devices_refused_with_one_line(tmp_path: Path, value: str) -> None:
    base = ["segmentation=single_fast", f"files.path={tmp_path}", "files.pattern=*.nii.gz"]
    with pytest.raises(ConfigError, match=r"^hardware\.devices=.*: give GPU ids, e\.g\."):
        settings_from_config(compose("segment", [*base, f"hardware.devices={value}"]))


@pytest.mark.parametrize("value", ["auto", "2", "-1", "[0,1]", "'0,1'"])
def test_lightning_devices_accepted(value: str) -> None:
    validate_training(compose("config", [f"lightning.devices={value}"]))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", r"must be at least 1, -1 \(all\)"),
        ("-2", r"must be an integer >= -1 \(-1: all\)"),
        ("two", r"must be an integer >= -1 \(-1: all\)"),
        ("[a]", r"must be an integer >= -1 \(-1: all\)"),
    ],
)
def test_lightning_devices_refused_with_todays_messages(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^`lightning\.devices`=.*" + message):
        validate_training(compose("config", [f"lightning.devices={value}"]))

"""The segment config and its groups (segmentation presets, roiloc, hardware, files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hsftrain.config.compose import CONF_DIR, compose, group_options
from hsftrain.hub.registry import load_registry
from hsftrain.inference.api import settings_from_config
from hsftrain.inference.engines import model_specs

PRESETS = sorted(p.stem for p in (CONF_DIR / "segmentation").glob("*.yaml"))
HSF_PRESETS = [
    "bagging_accurate",
    "bagging_fast",
    "bagging_sq",
    "single_accurate",
    "single_fast",
    "single_sq",
]


def test_every_hsf_preset_exists() -> None:
    assert set(HSF_PRESETS) | {"demo", "custom"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_validates(preset: str, tmp_path: Path) -> None:
    cfg = compose(
        "segment", [f"segmentation={preset}", f"files.path={tmp_path}", "files.pattern=*.nii.gz"]
    )
    seg = OmegaConf.to_container(cfg.segmentation, resolve=True)
    assert {"ca_mode", "models", "tta", "test_time_num_aug", "fusion", "description"} <= set(seg)
    if preset == "custom":
        assert seg["models"] is None
        cfg = compose(
            "segment",
            [
                f"segmentation={preset}",
                f"files.path={tmp_path}",
                "files.pattern=*",
                "segmentation.models={m: {path: /x.onnx}}",
            ],
        )
    settings = settings_from_config(cfg)
    assert settings.num_aug == (int(seg["test_time_num_aug"] or 4) if seg["tta"] else 0)


@pytest.mark.parametrize("preset", HSF_PRESETS)
def test_hsf_preset_models_are_registry_entries(preset: str) -> None:
    """Offline: every model name resolves to a url + xxh3_64 of the hub registry."""
    registry = load_registry()
    cfg = compose("segment", [f"segmentation={preset}"])
    specs = model_specs(cfg.segmentation.models)
    assert len(specs) == (5 if preset.startswith("bagging") else 1)
    # HSF's current models are 4.0.0; its sparse int8 (sq) models were published for 3.0.0 only.
    version = "3.0.0" if preset.endswith("_sq") else "4.0.0"
    for _, name in specs:
        assert name in registry and registry[name]["kind"] == "onnx"
        assert registry[name]["version"] == version, name


def test_demo_points_to_the_bundled_asset() -> None:
    cfg = compose("segment", ["segmentation=demo"])
    path = OmegaConf.to_container(cfg.segmentation.models, resolve=True)["msd_small.onnx"]["path"]
    assert path.endswith("assets/models/msd_small.onnx")


@pytest.mark.parametrize("group", ["roiloc", "hardware", "files"])
def test_other_groups_compose(group: str) -> None:
    for option in group_options()[group]:
        cfg = compose("segment", [f"{group}={option}"])
        assert group in cfg


def test_model_paths_shortcut_replaces_the_preset(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    cfg = compose(
        "segment",
        [f"files.path={tmp_path}", "files.pattern=*", f"model_paths=[{model},{model}]"],
    )
    assert settings_from_config(cfg).models == [("m.onnx", str(model)), ("m.onnx", str(model))]


def test_cli_prints_the_composed_config() -> None:
    from typer.testing import CliRunner

    from hsftrain.cli.app import app

    result = CliRunner().invoke(app, ["segment", "segmentation=single_fast", "--cfg", "job"])
    assert result.exit_code == 0 and "arunet_4.0.0_single" in result.output
    help_text = CliRunner().invoke(app, ["segment", "--help"]).output
    assert "segmentation" in help_text and "roiloc" in help_text


def test_model_paths_without_a_preset_is_one_plain_pass(tmp_path: Path) -> None:
    """Not the default preset's 21 views per model."""
    base = [f"files.path={tmp_path}", "files.pattern=*.nii.gz", "model_paths=[/x/a.onnx]"]
    settings = settings_from_config(compose("segment", base))
    assert settings.num_aug == 0 and settings.models == [("a.onnx", "/x/a.onnx")]
    assert settings_from_config(compose("segment", [*base, "segmentation.tta=true"])).num_aug == 4
    accurate = compose("segment", [*base, "segmentation=bagging_accurate"])
    assert settings_from_config(accurate).num_aug == 20  # a preset named keeps its views

"""``hsftrain hub publish``: a preset that ``segment`` runs and a model card, from a run
directory or an ONNX file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hsftrain.config.compose import compose
from hsftrain.hub.fetch import file_hash
from hsftrain.hub.publish import NO_LICENSE, PublishError, PublishOptions, publish
from hsftrain.hub.registry import fetch_spec, resolve

BUNDLED = Path(__file__).resolve().parents[2] / "src/hsftrain/assets/models"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory: the bundled small model as model.onnx, a config, a plan, metrics."""
    run = tmp_path / "runs" / "ft"
    run.mkdir(parents=True)
    shutil.copy(BUNDLED / "msd_small.onnx", run / "model.onnx")
    config = {
        "datasets": {"batch_size": 2, "datasets": {"folder": {"path": "."}}},
        "models": {"name": "ResidualUNet3D", "hparams": {"f_maps": 8}, "lr": 0.005},
        "seed": 42,
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "plan.yaml").write_text(yaml.safe_dump({"epochs": 32, "f_maps": 24}))
    metrics = {
        "val/dice/anterior": 0.83,
        "val/dice_mean": 0.84,
        "train/loss": 0.2,
        "test/dice_mean": 0.8,
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_run_directory_without_url_runs_locally(run_dir: Path) -> None:
    preset, card = publish(run_dir, PublishOptions(license="CC-BY-SA-4.0"))
    assert preset == run_dir / "model.preset.yaml"
    data = yaml.safe_load(preset.read_text())
    spec = data["models"]["model.onnx"]
    assert spec == {"path": "model.onnx", "xxh3_64": file_hash(run_dir / "model.onnx")}
    assert "--url" in preset.read_text()  # the placeholder note
    # hsftrain segment segmentation=<preset> resolves the model next to the preset
    cfg = compose("segment", [f"segmentation={preset}", "files.path=."])
    resolved = resolve(cfg.segmentation.models["model.onnx"])
    assert Path(resolved["path"]) == run_dir / "model.onnx"
    text = card.read_text()
    for part in (
        "# ft",
        "| 1 | anterior |",
        "`models.lr`: `0.005`",
        "epochs: 32",
        "`val/dice_mean`: 0.8400",
        "`test/dice_mean`: 0.8000",
        "CC-BY-SA-4.0",
        "## Intended use",
        "training datasets: `folder`",
    ):
        assert part in text, part
    assert "train/loss" not in text


def test_url_makes_a_hub_spec_and_entry(run_dir: Path, tmp_path: Path) -> None:
    url = "https://example.org/models/ft.onnx"
    preset, card = publish(run_dir, PublishOptions(url=url, out=tmp_path / "pub"))
    spec = yaml.safe_load(preset.read_text())["models"]["model.onnx"]
    assert spec == {"url": url, "xxh3_64": file_hash(run_dir / "model.onnx")}
    assert fetch_spec(spec) == spec
    assert NO_LICENSE in card.read_text()
    assert f"url: {url}" in card.read_text()


def test_onnx_file_alone_has_its_fingerprint_and_no_training(tmp_path: Path) -> None:
    model = tmp_path / "mine.onnx"
    shutil.copy(BUNDLED / "msd_hippocampus.onnx", model)
    _, card = publish(model)
    text = card.read_text()
    assert "`spacing_mm`: `[1.0, 1.0, 1.0]`" in text
    assert "not recorded with this file" in text
    assert (tmp_path / "mine.preset.yaml").is_file()


def test_republishing_other_content_needs_overwrite(run_dir: Path) -> None:
    _, card = publish(run_dir)
    card.write_text(card.read_text() + "\nmy notes\n")
    with pytest.raises(PublishError, match=r"model\.card\.md.*--overwrite"):
        publish(run_dir, PublishOptions(url="https://example.org/m.onnx"))
    assert "my notes" in card.read_text()
    publish(run_dir, PublishOptions(url="https://example.org/m.onnx", overwrite=True))
    assert "my notes" not in card.read_text()


@pytest.mark.parametrize(
    "source, words", [("nothing", "no such run directory"), ("emptyrun", "no model.onnx")]
)
def test_bad_sources_are_refused(tmp_path: Path, source: str, words: str) -> None:
    (tmp_path / "emptyrun").mkdir()
    with pytest.raises(PublishError, match=words):
        publish(tmp_path / source)


def test_bundled_cards_are_the_ones_publish_writes(tmp_path: Path) -> None:
    for name in ("msd_hippocampus", "msd_small"):
        card = BUNDLED / f"{name}.card.md"
        assert card.is_file(), card
        assert file_hash(BUNDLED / f"{name}.onnx") in card.read_text()
        assert f"{name}.card.md" in (BUNDLED / "README.md").read_text()

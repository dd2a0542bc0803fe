"""``resume=RUN`` continues a run from its own config.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import xxhash
import yaml
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.config.compose import ConfigError, compose
from tests.conftest import TINY


def _digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): xxhash.xxh3_64_hexdigest(p.read_bytes())
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
        if p.name not in skip
    }


@pytest.fixture
def run(phantoms: Path, tmp_path: Path) -> Path:
    """A finished 1-epoch run with non-default model settings (f_maps 4, 2 levels)."""
    args = [*TINY, "datasets=synth", f"datasets.main_path={phantoms}"]
    args += [f"datasets.output_path={tmp_path}", "run_name=r", "models.lr=5e-3"]
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    return tmp_path / "r"


def test_resume_uses_the_run_config_without_repeating_overrides(run: Path) -> None:
    result = CliRunner().invoke(app, ["train", f"resume={run}", "lightning.max_epochs=2"])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["models"]["hparams"]["f_maps"] == 4  # not the default 64
    assert saved["lightning"]["max_epochs"] == 2
    assert "epoch 2/2" in (run / "train.log").read_text()  # appended by the resume


def test_changed_model_keys_are_refused_and_nothing_is_written(run: Path) -> None:
    before = _digest(run)
    with pytest.raises(ConfigError) as err:
        compose("config", [f"resume={run}", "models.hparams.f_maps=8", "models.lr=1"])
    message = str(err.value)
    assert "models.hparams.f_maps (4 in the run, 8 here)" in message
    assert "models.lr" in message and "\n" not in message
    result = CliRunner().invoke(app, ["train", f"resume={run}", "datasets.batch_size=4"])
    assert result.exit_code == 1 and "datasets.batch_size" in result.output
    assert _digest(run) == before


def test_same_values_and_safe_keys_are_accepted(run: Path, phantoms: Path) -> None:
    cfg = compose(
        "config",
        [
            f"resume={run}",
            "models.hparams.f_maps=4",  # the run's own value
            "datasets=synth",
            f"datasets.main_path={phantoms}",
            "datasets.num_workers=0",
            "lightning.max_epochs=5",
            "lightning.enable_progress_bar=true",
        ],
    )
    assert cfg.models.hparams.f_maps == 4 and cfg.lightning.max_epochs == 5
    assert cfg.lightning.enable_progress_bar is True and cfg.resume == str(run)
    assert cfg.models.lr == 5e-3  # from the run, not the default


def test_resume_of_a_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "x" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="config.yaml is missing"):
        compose("config", [f"resume={tmp_path / 'x'}"])


@pytest.mark.slow
def test_failed_resume_start_leaves_the_run_as_it_was(run: Path, phantoms: Path) -> None:
    """A checkpoint that does not load: no logs_resumeN, config.yaml untouched."""
    other = run.parent / "other"
    args = [*TINY, "datasets=synth", f"datasets.main_path={phantoms}", "models.hparams.f_maps=8"]
    result = CliRunner().invoke(
        app, ["train", *args, f"datasets.output_path={run.parent}", "run_name=other"]
    )
    assert result.exit_code == 0, result.output
    shutil.copy(other / "checkpoints/last.ckpt", run / "checkpoints/last.ckpt")
    before = _digest(run, skip=("train.log",))
    result = CliRunner().invoke(app, ["train", f"resume={run}", "lightning.max_epochs=2"])
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "does not fit the model" in output
    assert "size mismatch" not in output  # one line, not the whole state_dict
    assert _digest(run, skip=("train.log",)) == before

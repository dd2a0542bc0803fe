"""Typed training settings: built once by the validation, the same training as before,
checkpoints of earlier versions still fine-tuned and exported, one count of the steps."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import xxhash
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.config.compose import compose
from hsftrain.training.settings import (
    AugmentBackend,
    FinetuneMode,
    Precision,
    RunKind,
    optimiser_steps,
    steps_per_epoch,
)
from hsftrain.training.validate import validate_training
from tests.conftest import TINY

#: ``last.ckpt`` of ``hsftrain train`` before the settings were typed (f_maps 4, 2 levels,
#: 8 classes of the synthetic phantoms, 2 epochs).
EARLIER = Path(__file__).parent / "data" / "tiny_run_last.ckpt"
BUNDLED = Path(__file__).parents[2] / "src/hsftrain/assets/models/msd_hippocampus.ckpt"

#: xxh3_64 of the weights the fixed-seed training below gave before the settings were typed.
DIGEST = "716922f8abb188e9"


def _data(phantoms: Path, out: Path) -> list[str]:
    return ["datasets=synth", f"datasets.main_path={phantoms}", f"datasets.output_path={out}"]


def _weights_digest(ckpt: Path) -> str:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    h = xxhash.xxh3_64()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_validation_returns_the_typed_settings(tmp_path: Path) -> None:
    cfg = compose(
        "config",
        [f"datasets.output_path={tmp_path}", "lightning.precision=32-true", "budget=30m"],
    )
    settings = validate_training(cfg, finetune=True)
    assert settings.kind is RunKind.FINETUNE and settings.kind == "finetune"
    assert settings.trainer.precision is Precision.TRUE32
    assert settings.augment.backend is AugmentBackend.TORCH
    assert settings.finetune is not None and settings.finetune.mode is FinetuneMode.DECODER
    assert settings.budget.seconds == 1800 and settings.plans
    assert settings.data.batch_size == int(cfg.datasets.batch_size)
    assert settings.config["models"]["lr"] == cfg.models.lr  # what checkpoints store
    assert validate_training(cfg).finetune is None
    with pytest.raises(AttributeError):
        settings.seed = 1  # type: ignore[misc]


def test_steps_per_epoch_counts_as_lightning() -> None:
    # the train loader drops a last incomplete batch when there is more than one batch
    assert steps_per_epoch(7, 2) == 3 and steps_per_epoch(6, 2) == 3
    assert steps_per_epoch(1, 2) == 1 and steps_per_epoch(2, 2) == 1
    # limit_train_batches: an int is a number of batches (1 too), a float a fraction
    assert steps_per_epoch(20, 2, 1) == 1 and steps_per_epoch(20, 2, 4) == 4
    assert steps_per_epoch(20, 2, 1.0) == 10 and steps_per_epoch(20, 2, 0.25) == 2
    assert optimiser_steps(5, 2, 3) == 9  # Lightning also steps at the end of the epoch


def test_training_limited_to_one_batch_counts_its_steps(phantoms: Path, tmp_path: Path) -> None:
    """``limit_train_batches=1`` (an int) trains one batch an epoch: the schedule lasts as
    many steps as the run takes."""
    args = [*TINY, *_data(phantoms, tmp_path), "run_name=one", "lightning.limit_train_batches=1"]
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(
        tmp_path / "one/checkpoints/last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["global_step"] == 1 and ckpt["hyper_parameters"]["total_steps"] == 1


@pytest.mark.slow
def test_fixed_seed_training_gives_the_same_weights_as_before(
    phantoms: Path, tmp_path: Path
) -> None:
    args = [
        *TINY,
        *_data(phantoms, tmp_path),
        "run_name=d",
        "lightning.max_epochs=2",
        "lightning.precision=32-true",
        "lightning.deterministic=true",
        "seed=7",
    ]
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    assert _weights_digest(tmp_path / "d/checkpoints/last.ckpt") == DIGEST


def test_checkpoint_of_an_earlier_version_is_finetuned_and_exported(
    phantoms: Path, tmp_path: Path
) -> None:
    from hsftrain.export.api import export_checkpoint

    onnx = export_checkpoint(EARLIER, tmp_path / "earlier.onnx")
    assert Path(onnx).is_file()
    args = [*TINY, *_data(phantoms, tmp_path), "run_name=ft", f"finetuning.pretrained={EARLIER}"]
    result = CliRunner().invoke(app, ["finetune", *args])
    assert result.exit_code == 0, result.output
    run = tmp_path / "ft"
    assert "val/dice_mean" in json.loads((run / "metrics.json").read_text())
    saved = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    before = torch.load(EARLIER, map_location="cpu", weights_only=False)
    assert set(saved["hyper_parameters"]) == set(before["hyper_parameters"])


def test_checkpoint_of_an_earlier_version_resumes(phantoms: Path, tmp_path: Path) -> None:
    """A run directory whose ``last.ckpt`` an earlier version wrote continues training."""
    base = [*TINY, *_data(phantoms, tmp_path)]
    first = CliRunner().invoke(app, ["train", *base, "run_name=r"])
    assert first.exit_code == 0, first.output
    run = tmp_path / "r"
    shutil.copy(EARLIER, run / "checkpoints/last.ckpt")  # epoch 1 done, 6 steps
    result = CliRunner().invoke(app, ["train", *base, f"resume={run}", "lightning.max_epochs=3"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 9  # 6 + 3


def test_bundled_checkpoint_builds_the_finetuned_module(phantoms: Path, tmp_path: Path) -> None:
    from hsftrain.data.discovery import discover
    from hsftrain.training.build import module_for, read_pretrained

    cfg = compose("config", [*_data(phantoms, tmp_path), f"finetuning.pretrained={BUNDLED}"])
    pretrained = read_pretrained(cfg)
    found = discover(cfg.datasets, True)
    module = module_for(cfg, found, 10, pretrained)
    weights = pretrained[1]
    kept = [k for k, v in module.net.state_dict().items() if v.shape == weights[k].shape]
    assert len(kept) >= len(weights) - 2  # all but a new head's weight and bias
    assert all(torch.equal(module.net.state_dict()[k], weights[k]) for k in kept)
    assert module.hparams["optim"] == dict(module.hparams["config"]["models"])

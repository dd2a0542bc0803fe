"""Lightning DDP simulated on CPU: two processes, one run directory, identical weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.training.distributed import compile_enabled, shared_run_name
from tests.conftest import TINY


@pytest.mark.slow
def test_ddp_spawn_two_cpu_processes_train_one_run(phantoms: Path, tmp_path: Path) -> None:
    args = [
        "train",
        *TINY,
        "lightning=ddp",
        "lightning.accelerator=cpu",
        "lightning.devices=2",
        "lightning.strategy=ddp_spawn",
        "datasets=synth",
        f"datasets.main_path={phantoms}",
        f"datasets.output_path={tmp_path}",
        "run_name=ddp",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "prepared"]
    run = tmp_path / "ddp"
    metrics = json.loads((run / "metrics.json").read_text())
    split = json.loads((run / "split.json").read_text())
    # each of the 2 processes gets half the subjects and takes full batches of 2 patches
    per_process = math.ceil(len(split["train"]) / 2)
    assert metrics["global_step"] == (per_process // 2 if per_process > 2 else 1)
    assert metrics["ddp/weight_spread"] == 0.0
    assert "val/dice_mean" in metrics
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_run_name_shared_by_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HSFTRAIN_RUN_NAME", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert shared_run_name() is None
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert shared_run_name() is None  # a single process: its own timestamp
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert shared_run_name() == "job-1234"
    monkeypatch.setenv("HSFTRAIN_RUN_NAME", "given")
    assert shared_run_name() == "given"


def test_compile_setting() -> None:
    assert compile_enabled(True, "cpu") and not compile_enabled("false", "gpu")
    assert compile_enabled("auto", "cpu") is False
    assert compile_enabled("auto", "auto") == torch.cuda.is_available()

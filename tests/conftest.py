"""Shared fixtures: tiny synthetic data written on the fly, and the real MSD samples."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="hsftrain-mpl-"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WANDB_MODE", "offline")

SAMPLE = Path(__file__).resolve().parents[1] / "src/hsftrain/assets/sample/msd_hippocampus"
SHARED_MSD = Path(__file__).resolve().parents[2] / "shared/data/msd_hippocampus"

#: Overrides for a tiny, fast training run (add datasets.* and output paths).
TINY = [
    "models.hparams.f_maps=4",
    "models.hparams.num_levels=2",
    "lightning.max_epochs=1",
    "lightning.enable_progress_bar=false",
    "logger=csv",
    "augmentation.elastic.p=0",
    "augmentation.motion.p=0",
    "export_onnx=false",
]

#: Hyper-parameters of a tiny ResidualUNet3D (f_maps 4, 2 levels, 3 classes).
TINY_HPARAMS = {
    "in_channels": 1,
    "out_channels": 3,
    "f_maps": 4,
    "num_levels": 2,
    "layer_order": "cgs",
    "conv_kernel_size": 3,
    "use_attention": True,
    "skip": "sum",
}


def tiny_net(seed: int = 0, **hparams: object) -> torch.nn.Module:
    """A ResidualUNet3D (f_maps 4, 2 levels) with random weights, in eval mode."""
    import torch

    from hsftrain.models import build_model

    torch.manual_seed(seed)
    params = {**TINY_HPARAMS, **hparams}
    name = str(params.pop("name", "ResidualUNet3D"))
    return build_model(name, params).eval()


#: Tests that drive the CLI or a training run end to end, as a user runs them (a second to a
#: few seconds each): all marked ``slow``, so that ``pytest -m "not slow"`` is the fast lane
#: (about 80 s on 2 cores); ``scripts/test.sh`` and CI run everything.
END_TO_END = (
    "tests/reliability/",
    "tests/test_docs_examples.py",
    "tests/test_benchmark_scorers.py",
    "tests/compression/test_pruning.py",
    "tests/compression/test_quantize.py",
    "tests/data/test_cache_manifest.py",
    "tests/export/test_cli_export.py",
    "tests/planning/test_plan_command.py",
    "tests/training/test_denormals.py",
    "tests/training/test_plan.py",
    "tests/training/test_run.py",
    "tests/training/test_settings.py",
    "tests/test_architecture.py::test_training_with_the_torch_backend_never_loads_torchio",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    for item in items:
        if item.nodeid.startswith(END_TO_END):
            item.add_marker(pytest.mark.slow)
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight 16x20x16 synthetic phantoms with HSF subfield labels."""
    from hsftrain.data.synth import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, n=8, shape=(16, 20, 16), seed=0)
    return out


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The bundled real MSD hippocampus crops."""
    assert SAMPLE.is_dir(), SAMPLE
    return SAMPLE


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, phantoms: Path) -> Path:
    """Run directory of a 1-epoch training (f_maps 4, 2 levels) on the phantoms.

    Holds config.yaml, split.json and checkpoints/last.ckpt, as ``hsftrain train`` writes.
    """
    from hsftrain.config.compose import compose
    from hsftrain.training.run import run

    out = tmp_path_factory.mktemp("export_runs")
    cfg = compose(
        "config",
        [
            *TINY,
            "datasets=synth",
            f"datasets.main_path={phantoms}",
            "models.lr=5e-3",
            f"datasets.output_path={out}",
            "run_name=tiny",
        ],
    )
    run(cfg)
    run_dir = out / "tiny"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run: Path) -> Path:
    """The last checkpoint of :func:`tiny_run`."""
    return tiny_run / "checkpoints" / "last.ckpt"

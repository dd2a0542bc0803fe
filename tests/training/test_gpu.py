"""GPU-only checks (skipped on CPU machines, run where a CUDA device exists)."""

import pytest

from tests.conftest import TINY


@pytest.mark.gpu
def test_bf16_training_on_gpu(phantoms, tmp_path):
    from hsftrain.config import compose
    from hsftrain.workflow import train

    cfg = compose(
        "config",
        [
            *TINY,
            "datasets=synth",
            f"datasets.main_path={phantoms}",
            f"datasets.output_path={tmp_path}",
            "run_name=gpu",
            "lightning.accelerator=gpu",
            "lightning.precision=bf16-mixed",
        ],
    )
    out = train(cfg)
    assert out["val/dice_mean"] >= 0

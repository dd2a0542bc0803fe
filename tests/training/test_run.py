"""The train command end to end on tiny synthetic data, and resuming a run."""

import json

import pytest
import torch
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.config.compose import compose
from tests.conftest import TINY


def _train(args):
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    return result


def test_cli_train_writes_run_and_resumes(phantoms, tmp_path):
    base = [
        *TINY,
        "datasets=synth",
        f"datasets.main_path={phantoms}",
        f"datasets.output_path={tmp_path}",
    ]
    _train([*base, "run_name=r1", "export_onnx=true"])
    run = tmp_path / "r1"
    for name in (
        "config.yaml",
        "split.json",
        "metrics.json",
        "model.onnx",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val/dice_mean" in metrics and "val/dice/CA1" in metrics
    assert "val/hd95_mm/CA1" in metrics and "val/assd_mm/DG" in metrics
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 6 and len(split["val"]) == 2

    _train([*base, f"resume={run}", "lightning.max_epochs=2"])
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * 3
    assert json.loads((run / "split.json").read_text()) == split
    assert (run / "logs" / "metrics.csv").is_file() and (
        run / "logs_resume1" / "metrics.csv"
    ).is_file()

    again = CliRunner().invoke(app, ["train", *base, "run_name=r1"])
    assert again.exit_code == 1


def test_bagging_run_writes_bootstrap_split(phantoms, tmp_path):
    from hsftrain.config.compose import compose
    from hsftrain.workflow import train

    cfg = compose(
        "config",
        [
            *TINY,
            "datasets=synth",
            f"datasets.main_path={phantoms}",
            f"datasets.output_path={tmp_path}",
            "run_name=bag",
            "datasets.replace=true",
            "datasets.k_sample=8",
            "seed=3",
            "lightning.limit_train_batches=1",
        ],
    )
    out = train(cfg)
    split = json.loads((tmp_path / "bag" / "split.json").read_text())
    assert len(split["train"]) == 8 and len(set(split["train"])) < 8
    assert not set(split["train"]) & set(split["val"])
    assert out["run_dir"].endswith("bag")


def test_help_lists_groups():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for group in ("datasets", "models", "lightning", "finetuning", "logger"):
        assert group in result.output


def test_cfg_job_prints_config():
    result = CliRunner().invoke(app, ["train", "models.lr=0.01", "--cfg", "job"])
    assert result.exit_code == 0 and "lr: 0.01" in result.output


@pytest.mark.parametrize(
    "override, message",
    [("models.nonsense=1", "nonsense"), ("datasets.main_path=/does/not/exist", "does not exist")],
)
def test_bad_input_fails_cleanly(override, message, tmp_path):
    result = CliRunner().invoke(app, ["train", override, f"datasets.output_path={tmp_path}"])
    assert result.exit_code == 1
    assert message in result.output


def test_batch_size_one_on_cpu_is_flagged(caplog):
    import logging

    from hsftrain.training.trainer import trainer_kwargs

    with caplog.at_level(logging.WARNING, logger="hsftrain"):
        base = ["datasets=folder", "datasets.path=x", "lightning.accelerator=cpu"]
        trainer_kwargs(compose("config", base))
        assert "batch_size" not in caplog.text
        trainer_kwargs(compose("config", [*base, "datasets.batch_size=1"]))
    assert "datasets.batch_size=1 on CPU" in caplog.text


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_bf16_only_where_native(monkeypatch, native):
    from hsftrain.training import trainer

    monkeypatch.setattr(trainer, "cpu_bf16", lambda: native)
    base = ["datasets=folder", "datasets.path=x", "lightning.accelerator=cpu"]
    bf16 = trainer.trainer_kwargs(compose("config", [*base, "lightning.precision=bf16-mixed"]))
    assert bf16["precision"] == ("bf16-mixed" if native else "32-true")
    fp16 = trainer.trainer_kwargs(compose("config", [*base, "lightning.precision=16-mixed"]))
    assert fp16["precision"] == "32-true"  # float16 autocast is a GPU feature


def test_cli_train_with_a_weight_average_resumes_it(phantoms, tmp_path):
    """models.ema_decay: checkpoints hold the average as the network (what export reads) and
    the trained weights beside it; a resume goes on with both."""
    base = [
        *TINY,
        "datasets=synth",
        f"datasets.main_path={phantoms}",
        f"datasets.output_path={tmp_path}",
        "models.ema_decay=0.9",
    ]
    _train([*base, "run_name=ema"])
    run = tmp_path / "ema"
    _train([*base, f"resume={run}", "lightning.max_epochs=2"])
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["ema_updates"] == ckpt["global_step"] == 2 * 3
    raw = ckpt["ema_raw"]
    assert set(raw) == {k for k in ckpt["state_dict"] if k.startswith("net.")}
    weights = [k for k in raw if raw[k].is_floating_point()]
    assert any(not torch.equal(raw[k], ckpt["state_dict"][k]) for k in weights)
    assert all(torch.isfinite(raw[k]).all() for k in weights)


def test_cli_train_with_deep_supervision_exports_the_head_only(phantoms, tmp_path):
    """``models.hparams.deep_supervision=true`` from the CLI: a 3-level run trains with the
    auxiliary head, and the exported model has one output, equal to the checkpoint's head;
    with 2 levels the key is refused in one line."""
    import numpy as np
    import onnxruntime as ort

    from hsftrain.training.checkpoint import load_network

    base = [
        *TINY,
        "datasets=synth",
        f"datasets.main_path={phantoms}",
        f"datasets.output_path={tmp_path}",
        "models.hparams.deep_supervision=true",
    ]
    refused = CliRunner().invoke(app, ["train", *base, "run_name=two"])
    message = " ".join(refused.output.split())  # one line, wrapped by the console
    assert refused.exit_code != 0 and "deep_supervision=true needs at least 3 levels" in message
    assert not (tmp_path / "two").exists()
    _train([*base, "models.hparams.num_levels=3", "export_onnx=true", "run_name=ds"])
    run = tmp_path / "ds"
    net, _ = load_network(run / "checkpoints" / "last.ckpt")
    assert len(net.aux_heads) == 1
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()) == 1
    x = torch.randn(1, 1, 16, 20, 16)
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.allclose(onnx_out, torch.softmax(net.eval()(x), 1).numpy(), atol=1e-4)

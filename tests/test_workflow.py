"""A 2-member bagging ensemble: trained, exported, preset written, segmented, evaluated."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hsftrain.cli.app import app
from tests.conftest import TINY


@pytest.mark.slow
def test_ensemble_train_segment_evaluate(phantoms, tmp_path):
    runner = CliRunner()
    base = [
        *TINY,
        "datasets=synth",
        f"datasets.main_path={phantoms}",
        f"datasets.output_path={tmp_path}",
    ]
    result = runner.invoke(
        app,
        [
            "train",
            *base,
            "run_name=ens",
            "ensemble.members=2",
            "lightning.max_epochs=2",
            "models.lr=1e-2",
        ],
    )
    assert result.exit_code == 0, result.output
    root = tmp_path / "ens"
    preset = yaml.safe_load((root / "preset.yaml").read_text())
    assert list(preset["models"]) == ["member_0.onnx", "member_1.onnx"]
    assert all(len(m["xxh3_64"]) == 16 for m in preset["models"].values())
    splits = [json.loads((root / f"member_{k}" / "split.json").read_text()) for k in (0, 1)]
    assert splits[0]["seed"] != splits[1]["seed"] and splits[0]["train"] != splits[1]["train"]

    out = tmp_path / "seg"
    result = runner.invoke(
        app,
        [
            "segment",
            f"files.path={phantoms}",
            "files.pattern=*_img.nii.gz",
            f"files.output_dir={out}",
            f"segmentation={root / 'preset.yaml'}",
            "segmentation.tta=false",
            "qc=false",
        ],
    )
    assert result.exit_code == 0, result.output
    segs = sorted(out.rglob("*_seg.nii.gz"))
    assert len(segs) == 8, [p.name for p in out.rglob("*")]

    result = runner.invoke(
        app, ["evaluate", f"pred={out}", f"ref={phantoms}/*_lbl.nii.gz", f"out={tmp_path / 'eval'}"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "metrics.csv").is_file()


def test_preset_paths_are_relative_and_survive_a_move(tmp_path):
    """A run folder moved or shared keeps a working preset."""
    import shutil

    from hsftrain.config.compose import compose
    from hsftrain.workflow import write_preset

    root = tmp_path / "runs" / "bag"
    files = []
    for k in (0, 1):
        (root / f"member_{k}").mkdir(parents=True)
        files.append(root / f"member_{k}" / "model.onnx")
        files[-1].write_bytes(b"onnx %d" % k)
    preset = write_preset(root / "preset.yaml", files)
    stored = yaml.safe_load(preset.read_text())["models"]
    assert [m["path"] for m in stored.values()] == ["member_0/model.onnx", "member_1/model.onnx"]
    moved = tmp_path / "elsewhere" / "bag"
    shutil.move(str(root), str(moved))
    cfg = compose("segment", [f"segmentation={moved / 'preset.yaml'}"])
    paths = [m.path for m in cfg.segmentation.models.values()]
    assert paths == [str(moved / "member_0/model.onnx"), str(moved / "member_1/model.onnx")]
    assert all(Path(p).is_file() for p in paths)


def test_failed_export_after_training_names_the_kept_checkpoint(tmp_path, monkeypatch):
    """A run whose export check fails says where its trained checkpoints are."""
    import hsftrain.workflow as workflow
    from hsftrain.config.compose import compose
    from hsftrain.core.errors import ExportError
    from hsftrain.training.run import RunResult

    best = tmp_path / "run" / "checkpoints" / "best-epoch022.ckpt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"ckpt")
    monkeypatch.setattr(
        workflow,
        "run",
        lambda cfg, finetune=False: RunResult(best.parent.parent, str(best), {}),
    )

    def failing_export(ckpt, out):
        raise ExportError("ONNX Runtime differs from PyTorch by 5e-01")

    monkeypatch.setattr(workflow, "export_checkpoint", failing_export)
    with pytest.raises(ExportError, match="differs") as error:
        workflow.train_and_export(compose("config", ["export_onnx=true"]))
    assert str(best) in str(error.value) and "hsftrain export ckpt=" in str(error.value)
    assert best.read_bytes() == b"ckpt"

"""``hsftrain train``: invalid settings fail before anything is written; a run that
diverges, is interrupted or meets a bad file stops with one line and keeps what is good."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hsftrain.training import run as run_module
from hsftrain.training.guards import FiniteGuard
from hsftrain.training.module import SegmentationModule

from .conftest import assert_no_temporaries, assert_user_error, cli, files_below, train_args


@pytest.mark.parametrize(
    "override, words",
    [
        ("datasets.batch_size=0", ["datasets.batch_size", ">= 1"]),
        ("datasets.batch_size=two", ["datasets.batch_size", "integer"]),
        ("lightning.max_epochs=-1", ["lightning.max_epochs", ">= 1"]),
        ("models.lr=0", ["models.lr", "> 0"]),
        ("models.lr=nan", ["models.lr", "finite"]),
        ("datasets.train_ratio=1.5", ["datasets.train_ratio"]),
        ("datasets.k_sample=0", ["datasets.k_sample"]),
        ("datasets.patch_size=[16,16]", ["datasets.patch_size", "three sizes"]),
        ("models.hparams.num_levels=0", ["models.hparams.num_levels"]),
        ("models.hparams.f_maps=0", ["models.hparams.f_maps"]),
        ("models.hparams.layer_order=cxq", ["models.hparams.layer_order"]),
        ("models.hparams.conv_kernel_size=2", ["conv_kernel_size", "odd"]),
        ("lightning.precision=12", ["lightning.precision"]),
        ("lightning.accumulate_grad_batches=0", ["accumulate_grad_batches"]),
        ("ensemble.members=0", ["ensemble.members"]),
        ("validation.surface_every=-2", ["validation.surface_every"]),
    ],
)
def test_invalid_setting_is_refused_before_anything_is_written(
    override: str, words: list[str], phantoms: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    result = cli("train", *train_args(phantoms, out, "run_name=r", override))
    assert_user_error(result, *words)
    assert not out.exists()


def test_output_path_that_is_a_file(phantoms: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    result = cli("train", *train_args(phantoms, blocker, "run_name=r"))
    assert_user_error(result, "datasets.output_path", "is a file")
    assert blocker.read_text() == "not a folder"


def test_output_path_below_a_file(phantoms: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = cli("train", *train_args(phantoms, tmp_path / "file" / "runs", "run_name=r"))
    assert_user_error(result, "datasets.output_path", "is a file")


def test_read_only_output_path(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if Path(p) == readonly else real_access(p, mode)
    )  # root may write anywhere: the check itself is what is tested
    result = cli("train", *train_args(phantoms, readonly / "runs", "run_name=r"))
    assert_user_error(result, "not writable")
    assert files_below(readonly) == set()


def test_network_too_deep_for_the_volumes(phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = cli("train", *train_args(phantoms, out, "run_name=r", "models.hparams.num_levels=6"))
    message = assert_user_error(result, "num_levels", "too deep", "at most 5 levels")
    assert "16x24x16" in message
    assert not out.exists()


def test_missing_dataset_folder(phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = cli("train", *train_args(phantoms, out, "datasets.main_path=/no/such/dir"))
    assert_user_error(result, "does not exist")
    assert not out.exists()


def test_existing_run_is_not_overwritten(phantoms: Path, tmp_path: Path) -> None:
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    result = cli("train", *train_args(phantoms, tmp_path, "run_name=r"))
    assert_user_error(result, "already holds a run", "resume=")
    assert files_below(tmp_path / "r") == {"checkpoints"}


def test_resume_of_nothing(phantoms: Path, tmp_path: Path) -> None:
    result = cli("train", *train_args(phantoms, tmp_path, f"resume={tmp_path / 'nope'}"))
    assert_user_error(result, "resume=")


def test_missing_split_file(phantoms: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = cli("train", *train_args(phantoms, out, f"split_file={tmp_path / 'split.json'}"))
    assert_user_error(result, "split_file", "no such file")
    assert not out.exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = SegmentationModule.training_step

    def poisoned(self: SegmentationModule, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = step(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch == 1 and batch_idx == 1 else loss

    monkeypatch.setattr(SegmentationModule, "training_step", poisoned)
    args = train_args(phantoms, tmp_path, "run_name=nan", "lightning.max_epochs=3")
    result = cli("train", *args, "export_onnx=true")
    assert_user_error(result, "epoch 2/3, batch 2", "loss is nan", "last.ckpt", "models.lr")
    run = tmp_path / "nan"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 0  # the end of the first epoch: good weights
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )
    assert not (run / "model.onnx").exists() and not (run / "metrics.json").exists()
    assert_no_temporaries(run)


def test_non_finite_weights_stop_the_run(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Poison(FiniteGuard):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("inf"))
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(run_module, "FiniteGuard", Poison)
    result = cli("train", *train_args(phantoms, tmp_path, "run_name=inf", "export_onnx=true"))
    assert_user_error(result, "weights became NaN/Inf", "no checkpoint had been saved yet")
    assert not (tmp_path / "inf" / "model.onnx").exists()
    assert not (tmp_path / "inf" / "checkpoints").exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_the_epoch_in_progress_and_resume_finishes(
    signum: int, code: int, phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Preempt(FiniteGuard):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if trainer.current_epoch == 1 and batch_idx == 1:
                os.kill(os.getpid(), signum)  # the scheduler's signal, mid-epoch

    monkeypatch.setattr(run_module, "FiniteGuard", Preempt)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    args = train_args(phantoms, tmp_path, "run_name=p", "lightning.max_epochs=3")
    result = cli("train", *args)
    run = tmp_path / "p"
    message = assert_user_error(result, signal.Signals(signum).name, "epoch 2", code=code)
    assert f"hsftrain train resume={run}" in message
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 + 2  # epoch 1 (3 batches) and 2 batches of epoch 2
    assert_no_temporaries(run)
    assert signal.getsignal(signal.SIGTERM) == handlers[0]  # restored after the run
    assert signal.getsignal(signal.SIGINT) == handlers[1]

    monkeypatch.setattr(run_module, "FiniteGuard", FiniteGuard)
    again = cli("train", *args, f"resume={run}")
    assert again.code == 0, again.output[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 * 3 and ckpt["epoch"] == 2


def _bad_subject(phantoms: Path, folder: Path) -> Path:
    """A copy of the phantoms; returns the image of its first subject (to be spoiled)."""
    folder.mkdir()
    for path in phantoms.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return sorted(folder.glob("*_img.nii.gz"))[0]


def test_truncated_training_image(phantoms: Path, tmp_path: Path) -> None:
    image = _bad_subject(phantoms, tmp_path / "data")
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    out = tmp_path / "runs"
    result = cli("train", *train_args(tmp_path / "data", out, "run_name=t", "export_onnx=true"))
    assert_user_error(result, image.name)
    assert not (out / "t" / "model.onnx").exists()
    assert_no_temporaries(out)


def test_nan_voxels_in_a_training_image(phantoms: Path, tmp_path: Path) -> None:
    image = _bad_subject(phantoms, tmp_path / "data")
    img = nib.load(str(image))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[3:5, 3:5, 3:5] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(image))
    out = tmp_path / "runs"
    result = cli("train", *train_args(tmp_path / "data", out, "run_name=n", "export_onnx=true"))
    message = assert_user_error(result)
    assert image.name in message or "nan" in message.lower()
    assert not (out / "n" / "model.onnx").exists()


def test_same_subject_in_two_datasets_stays_on_one_side(phantoms: Path, tmp_path: Path) -> None:
    from hsftrain.data.discovery import discover
    from hsftrain.data.splits import SplitSettings, make_split

    for name in ("a", "b"):  # the same four subjects copied into two folders
        (tmp_path / name).mkdir()
        for path in sorted(phantoms.iterdir())[:8]:
            (tmp_path / name / path.name).write_bytes(path.read_bytes())
    pattern = {"p": {"mri": "*_img.nii.gz", "label": "{id}_lbl.nii.gz"}}
    found = discover(
        {
            "main_path": str(tmp_path),
            "datasets": {n: {"path": n, "ca_type": "1/2/3", "patterns": pattern} for n in "ab"},
        }
    )
    assert len(found.subjects) == 8 and len(found.groups) == 4
    for seed in range(5):
        split = make_split(len(found.subjects), SplitSettings(0.5, seed=seed), groups=found.groups)
        for group in found.groups:
            assert set(group) <= set(split.train) or set(group) <= set(split.val)

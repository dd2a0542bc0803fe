"""The classes a model gets are the classes its data hold: a stray label value, an
``out_channels`` that disagrees with the data or class names that disagree with the
checkpoint are one line before anything is written; an unnamed folder fine-tunes a model
under the model's class names; a refused run leaves no run directory behind."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hsftrain.data.nifti import load_volume, save_volume
from hsftrain.data.synth import write_phantoms
from tests.conftest import TINY

from .conftest import assert_user_error, cli

EPOCH = [*TINY[2:], "lightning.limit_train_batches=2", "lightning.limit_val_batches=1"]


def _folder(root: Path, stray: int | None = None, n: int = 8) -> Path:
    """``n`` 24x28x24 phantoms labelled 0/1/2; with ``stray``, 20 voxels of that value in
    the fourth map."""
    shutil.rmtree(root, ignore_errors=True)
    for i, (_, label_path) in enumerate(write_phantoms(root, n=n, shape=(24, 28, 24), seed=1)):
        label, affine = load_volume(label_path)
        label = np.minimum(label, 2).astype(np.uint8)
        if stray is not None and i == 3:
            label[0:2, 0:2, 0:5] = stray  # 20 voxels in a corner
        save_volume(label, affine, label_path)
    return root


def _data(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["datasets=folder", f"datasets.path={folder}", f"datasets.output_path={out}", *extra]


def _finetune(folder: Path, out: Path, ckpt: Path, *extra: str) -> list[str]:
    """``hsftrain finetune`` for one short epoch from ``ckpt`` (run name ``r`` unless given)."""
    name = [] if any(e.startswith("run_name=") for e in extra) else ["run_name=r"]
    return ["finetune", *_data(folder, out, *EPOCH, f"finetuning.pretrained={ckpt}", *extra, *name)]


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unnamed folder: label values 0, 1, 2."""
    return _folder(tmp_path_factory.mktemp("three"))


@pytest.fixture(scope="module")
def named_ckpt(tmp_path_factory: pytest.TempPathFactory, three: Path) -> Path:
    """A 3-class model whose classes are named (background, anterior, posterior)."""
    out = tmp_path_factory.mktemp("named_runs")
    names = "datasets.datasets.folder.labels_names={1: anterior, 2: posterior}"
    result = cli("train", *_data(three, out, names), *TINY[:2], *EPOCH, "run_name=base")
    assert result.code == 0, result.output[-3000:]
    return out / "base" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("command", ["data prepare", "train", "finetune"])
def test_a_stray_label_value_is_refused_by_every_command(
    command: str, tmp_path: Path, tiny_ckpt: Path
) -> None:
    folder = _folder(tmp_path / "stray", stray=7)
    out = tmp_path / "runs"
    args = [*command.split(), *_data(folder, out)]
    if command != "data prepare":
        args += [*TINY, "run_name=r"]
    if command == "finetune":
        args.append(f"finetuning.pretrained={tiny_ckpt}")
    message = assert_user_error(
        cli(*args), "sub-003_lbl.nii.gz", "label value 7", "20 voxels", "1 of 8 label maps"
    )
    assert "datasets.datasets.folder.labels='{1: 1, 2: 2, 7: 0}'" in message
    assert not out.exists()  # nothing prepared, no run directory


def test_the_suggested_mapping_drops_the_stray_value(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "stray", stray=7)
    mapped = "datasets.datasets.folder.labels={1: 1, 2: 2, 7: 0}"
    result = cli("data", "prepare", *_data(folder, tmp_path / "runs", mapped))
    assert result.code == 0, result.output[-3000:]


def test_values_outside_the_tables_are_named_with_their_voxel_count(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "stray", stray=7)
    out = tmp_path / "runs"
    table = "datasets.datasets.folder.labels={1: 1, 2: 2}"
    message = assert_user_error(cli("data", "prepare", *_data(folder, out, table)), "[7]")
    assert "(7: 20 voxels)" in message and "datasets.datasets.folder.labels {1: 1, 2: 2}" in message
    names = "datasets.datasets.folder.labels_names={1: a, 2: b}"
    message = assert_user_error(cli("data", "prepare", *_data(folder, out, names)), "[7]")
    assert "(7: 20 voxels)" in message and "datasets.datasets.folder.labels_names" in message
    assert not out.exists()


def test_train_out_channels_must_be_the_data_classes(three: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = _data(three, out, *TINY, "models.hparams.out_channels=5", "run_name=r")
    assert_user_error(
        cli("train", *args), "models.hparams.out_channels=5", "3 classes", "out_channels=3"
    )
    assert not out.exists()


def test_finetune_out_channels_must_be_the_data_classes(
    three: Path, tmp_path: Path, named_ckpt: Path
) -> None:
    out = tmp_path / "runs"
    assert_user_error(
        cli(*_finetune(three, out, named_ckpt, "finetuning.out_channels=5")),
        "finetuning.out_channels=5",
        "3 classes",
        "finetuning.out_channels=null",
    )
    assert not out.exists()


def test_an_unnamed_folder_keeps_the_checkpoint_class_names(
    three: Path, tmp_path: Path, named_ckpt: Path
) -> None:
    out = tmp_path / "runs"
    result = cli(*_finetune(three, out, named_ckpt, "run_name=ft"))
    assert result.code == 0, result.output[-3000:]
    log = (out / "ft" / "train.log").read_text()
    assert "unnamed classes (label values 1-2) take the checkpoint's names" in log
    saved = torch.load(out / "ft" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["hyper_parameters"]["class_names"] == ["background", "anterior", "posterior"]


def test_named_classes_that_disagree_with_the_checkpoint_are_refused(
    three: Path, tmp_path: Path, named_ckpt: Path
) -> None:
    out = tmp_path / "runs"
    names = "datasets.datasets.folder.labels_names={1: head, 2: body}"
    assert_user_error(
        cli(*_finetune(three, out, named_ckpt, names)),
        "(head, body)",
        "(anterior, posterior)",
        "datasets.datasets.folder.labels_names",
        "models.use_forgiving_loss=false",
    )
    assert not out.exists()


needs_no_wandb = pytest.mark.skipif(
    importlib.util.find_spec("wandb") is not None, reason="refusal needs wandb absent"
)


@needs_no_wandb
def test_a_refusal_after_the_run_directory_is_made_removes_it(three: Path, tmp_path: Path) -> None:
    """``logger=wandb`` without its package is refused once the run directory is written:
    the directory, and the folder made above it for a nested run name, are removed."""
    out = tmp_path / "runs"
    args = _data(three, out, *TINY, "logger=wandb", "run_name=group/one")
    assert_user_error(cli("train", *args), "logger=wandb")
    assert not (out / "group").exists()
    assert (out / "prepared").is_dir()  # the data cache beside it is kept


@needs_no_wandb
def test_a_refusal_keeps_a_folder_that_existed_before(three: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    (out / "mine").mkdir(parents=True)
    (out / "mine" / "notes.txt").write_text("kept")
    args = _data(three, out, *TINY, "logger=wandb", "run_name=mine")
    assert_user_error(cli("train", *args), "logger=wandb")
    assert (out / "mine" / "notes.txt").read_text() == "kept"

"""Training on label maps that lack some of their dataset's classes: forgiven per subject,
left out of validation Dice, and a resume finds the loss tables of the data it finds."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hsftrain.training.module import SegmentationModule
from tests.reliability.conftest import cli, train_args

NAMES = ["background", "DG", "TAIL"]
OPTIM = {"lr": 1e-3, "use_forgiving_loss": True, "loss": {}, "optimizer": {}, "scheduler": {}}


def _module(forgiving: bool = True) -> SegmentationModule:
    return SegmentationModule(
        "ResidualUNet3D",
        {"in_channels": 1, "out_channels": 3, "f_maps": 4, "num_levels": 2},
        NAMES,
        {0: NAMES},
        {0: "1/2/3"},
        {**OPTIM, "use_forgiving_loss": forgiving},
        total_steps=10,
        lacking_tables={1: (0, (2,))},
    )


@pytest.mark.parametrize("forgiving", [True, False])
def test_validation_dice_leaves_out_a_class_the_map_lacks(forgiving: bool) -> None:
    module = _module(forgiving)
    ref = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    ref[:, :2] = 1  # DG, no TAIL in either map
    pred = ref.clone()
    pred[1, 3, 0] = 2  # TAIL predicted in the second map (one that lacks TAIL)
    module._accumulate_dice(pred, ref, torch.tensor([0, 1]))
    dg, tail = (module.dice_names.index(n) for n in ("DG", "TAIL"))
    assert module.dice_count[dg] == 2
    # the first map (its dataset's table) counts TAIL: both empty, 1; the second does not:
    # neither a perfect score nor a zero
    assert module.dice_count[tail] == 1 and module.dice_sum[tail] == 1


def _lacking(root: Path, value: int, subject: str) -> None:
    """Make ``subject``'s label map lack ``value`` (its voxels become background)."""
    path = root / f"{subject}_lbl.nii.gz"
    image = nib.load(path)
    data = np.asarray(image.dataobj).copy()
    assert (data == value).any()
    data[data == value] = 0
    nib.save(nib.Nifti1Image(data, image.affine, image.header), path)


@pytest.mark.slow
def test_a_run_with_a_map_lacking_tail_trains_and_resumes_on_other_tables(
    phantoms: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(phantoms, data)
    subjects = sorted(p.name.removesuffix("_lbl.nii.gz") for p in data.glob("*_lbl.nii.gz"))
    _lacking(data, 7, subjects[0])  # TAIL
    args = train_args(data, tmp_path, "run_name=r", "lightning.max_epochs=2")
    done = cli("train", *args)
    assert done.code == 0, done.output[-3000:]
    said = [w for w in done.warnings if "have no TAIL" in w]
    assert said == [
        f"dataset synth: 1 of {len(subjects)} label maps have no TAIL ({subjects[0]}_lbl.nii.gz)"
        "; they are used: TAIL is forgiven there (the loss and validation Dice leave it out)"
    ]
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"]["loss.tables"].shape[0] == 2  # the dataset's, the lacking maps'
    metrics = (tmp_path / "r").rglob("metrics.csv")
    rows = [line.split(",") for m in metrics for line in m.read_text().splitlines()]
    header = rows[0]
    column = header.index("train/loss_epoch")
    values = [float(r[column]) for r in rows[1:] if len(r) > column and r[column]]
    assert len(values) == 2 and all(math.isfinite(v) for v in values)
    # another map now lacks HEAD: one more table, restored from the checkpoint's fewer
    _lacking(data, 6, subjects[1])
    again = cli("train", f"resume={tmp_path / 'r'}", "lightning.max_epochs=3")
    assert again.code == 0, again.output[-3000:]
    assert [w for w in again.warnings if "have no HEAD" in w]
    ckpt = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"]["loss.tables"].shape[0] == 3
    assert ckpt["epoch"] == 2

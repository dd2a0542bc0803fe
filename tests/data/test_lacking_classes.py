"""Label maps lacking some of their dataset's classes: each (dataset, lacking classes) pair
gets a loss table of its own, carried by the training items, and one warning per class
says whether training forgives it."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.data.cache import prepare
from hsftrain.data.dataset import PatchDataset, VolumeDataset, pad_collate
from hsftrain.data.discovery import discover

NAMES = {1: "DG", 2: "CA1", 3: "TAIL"}


def _pair(root: Path, sid: str, values: tuple[int, ...], seed: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).random((8, 8, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / f"{sid}_img.nii.gz"))
    label = np.zeros((8, 8, 8), np.uint8)
    for i, v in enumerate(values):
        label[i, :2, :2] = v
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / f"{sid}_lbl.nii.gz"))


def _cfg(root: Path) -> dict:
    entry = {
        "ca_type": "1/2/3",
        "patterns": {"p": {"mri": "*_img.nii.gz", "label": "{id}_lbl.nii.gz"}},
    }
    return {
        "main_path": str(root),
        "datasets": {
            "a": {**entry, "path": "a", "labels_names": NAMES},
            "b": {**entry, "path": "b", "labels_names": NAMES},
        },
    }


@pytest.fixture
def data(tmp_path: Path) -> Path:
    _pair(tmp_path / "a", "full", (1, 2, 3), 0)
    for k in range(5):  # five maps without TAIL: three named, then a count
        _pair(tmp_path / "a", f"crop{k}", (1, 2), 1 + k)
    _pair(tmp_path / "a", "tiny", (1,), 9)  # no CA1, no TAIL
    _pair(tmp_path / "b", "crop", (1, 2), 10)  # no TAIL, in another dataset
    return tmp_path


def test_one_table_per_dataset_and_lacking_classes(data: Path) -> None:
    found = discover(_cfg(data), forgiving=True)
    assert found.lacking_tables == {2: (0, (2, 3)), 3: (0, (3,)), 4: (1, (3,))}
    tables = {s.label.name: s.table for s in found.subjects}
    assert tables["full_lbl.nii.gz"] is None  # its dataset's own (index 0)
    assert tables["crop0_lbl.nii.gz"] == tables["crop4_lbl.nii.gz"] == 3
    assert tables["tiny_lbl.nii.gz"] == 2
    assert [s.table for s in found.subjects if s.dataset == 1] == [4]


@pytest.mark.parametrize(
    ("forgiving", "says"),
    [
        (True, "TAIL is forgiven there (the loss and validation Dice leave it out)"),
        (
            False,
            "TAIL is trained as background there (models.use_forgiving_loss=false: the model "
            "learns that their crops hold no TAIL; validation Dice leaves it out)",
        ),
    ],
)
def test_one_warning_per_class_says_whether_it_is_forgiven(
    data: Path, caplog: pytest.LogCaptureFixture, forgiving: bool, says: str
) -> None:
    with caplog.at_level(logging.WARNING):
        discover(_cfg(data), forgiving=forgiving)
    tail = [r.getMessage() for r in caplog.records if "have no TAIL" in r.getMessage()]
    assert tail == [
        "dataset a: 6 of 7 label maps have no TAIL (crop0_lbl.nii.gz, crop1_lbl.nii.gz, "
        f"crop2_lbl.nii.gz and 3 more); they are used: {says}",
        f"dataset b: 1 of 1 label maps have no TAIL (crop_lbl.nii.gz); they are used: {says}",
    ]
    assert len([r for r in caplog.records if "have no CA1" in r.getMessage()]) == 1


def test_items_and_batches_carry_the_loss_table(data: Path, tmp_path: Path) -> None:
    found = discover(_cfg(data))
    prepared = prepare(found, tmp_path / "cache", progress=False)
    expected = [s.dataset if s.table is None else s.table for s in found.subjects]
    volumes = VolumeDataset(prepared)
    assert [volumes[i]["table"] for i in range(len(volumes))] == expected
    patches = PatchDataset(prepared, (8, 8, 8))
    batch = pad_collate([patches[i] for i in range(len(patches))])
    assert batch["table"].tolist() == expected
    assert batch["dataset"].tolist() == [s.dataset for s in found.subjects]

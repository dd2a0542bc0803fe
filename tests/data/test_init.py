"""``hsftrain data init``: a dataset config from a folder of pairs, used by datasets=<file>."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from hsftrain.config.compose import compose
from hsftrain.data.discovery import discover
from tests.reliability.conftest import assert_user_error, cli


def _pair(image: Path, label: Path, values: tuple[int, ...]) -> None:
    image.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(image)))
    nib.save(nib.Nifti1Image(rng.random((8, 8, 8)).astype(np.float32), np.eye(4)), image)
    lbl = np.zeros((8, 8, 8), np.uint8)
    for i, v in enumerate(values):
        lbl[i, : i + 1, 0] = v
    nib.save(nib.Nifti1Image(lbl, np.eye(4)), label)


def test_hsf_t2_crops_give_one_pattern_per_side_and_hsf_names(tmp_path: Path) -> None:
    root = tmp_path / "custom_dataset"
    for sid in ("sub-01", "sub-02"):
        for side in "LR":
            stem = root / sid / "anat" / f"{sid}_T2w_hippocampus_{side}"
            _pair(Path(f"{stem}.nii.gz"), Path(f"{stem}_seg.nii.gz"), tuple(range(1, 8)))
    out = cli("data", "init", root, "--out", tmp_path / "mine.yaml")
    assert out.code == 0, out.output
    cfg = yaml.safe_load((tmp_path / "mine.yaml").read_text())
    entry = cfg["datasets"]["custom_dataset"]
    assert entry["patterns"]["t2w_hippocampus_r"] == {
        "mri": "**/*_T2w_hippocampus_R.nii.gz",
        "label": "{id}_T2w_hippocampus_R_seg.nii.gz",
    }
    assert entry["labels_names"] == dict(enumerate("DG CA1 CA2 CA3 SUB HEAD TAIL".split(), 1))
    composed = compose("config", [f"datasets={tmp_path / 'mine.yaml'}"])
    found = discover(composed.datasets)
    assert len(found.subjects) == 4
    assert any("datasets=" in line for line in out.infos)


def test_other_values_are_numbered_with_counts_and_names_to_fill_in(tmp_path: Path) -> None:
    for sid in ("a", "b"):
        _pair(tmp_path / "d" / f"{sid}_img.nii.gz", tmp_path / "d" / f"{sid}_lbl.nii.gz", (2, 9))
    out = cli("data", "init", tmp_path / "d", "--out", tmp_path / "d.yaml")
    assert out.code == 0, out.output
    text = (tmp_path / "d.yaml").read_text()
    assert "#   2: 2 voxels in 2 of 2 maps" in text and "#   9: 4 voxels in 2 of 2 maps" in text
    entry = yaml.safe_load(text)["datasets"]["d"]
    assert entry["patterns"]["img"] == {"mri": "**/*_img.nii.gz", "label": "{id}_lbl.nii.gz"}
    assert entry["labels"] == {2: 1, 9: 2}
    assert entry["labels_names"] == {1: "label_2", 2: "label_9"}


def test_a_folder_without_pairs_and_an_existing_out_are_refused(tmp_path: Path) -> None:
    _pair(tmp_path / "d" / "a_img.nii.gz", tmp_path / "d" / "a_mask_x.nii.gz", (1,))
    out = cli("data", "init", tmp_path / "d", "--out", tmp_path / "d.yaml")
    assert_user_error(out, "no image with its label map", "_seg", str(tmp_path / "d"))
    assert not (tmp_path / "d.yaml").exists()
    (tmp_path / "e.yaml").write_text("kept: 1\n")
    _pair(tmp_path / "e" / "a_T1w.nii.gz", tmp_path / "e" / "a_T1w_seg.nii.gz", (1,))
    out = cli("data", "init", tmp_path / "e", "--out", tmp_path / "e.yaml")
    assert_user_error(out, "--out", "exists", "--force")
    assert (tmp_path / "e.yaml").read_text() == "kept: 1\n"
    assert cli("data", "init", tmp_path / "e", "--out", tmp_path / "e.yaml", "--force").code == 0

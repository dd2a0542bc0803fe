"""Features meeting each other as a lab meets them: the QC report reading a BIDS
whole-head output's volumes table."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from hsftrain.collect.outputs import SegmentedCrop
from hsftrain.report.cohort import crop_row


def test_the_report_shows_the_flag_of_a_bids_whole_head_side(tmp_path: Path) -> None:
    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    labels = np.zeros((16, 16, 16), dtype=np.uint8)
    labels[4:8, 4:8, 4:8] = 1
    crops = {}
    for side in ("left", "right"):
        pred = anat / f"sub-01_space-T1w_desc-{side}hippocampuscrop_dseg.nii.gz"
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(pred))
        crops[side] = SegmentedCrop("sub-01", side, pred, pred)
    (anat / "sub-01_desc-hippocampus_volumes.tsv").write_text(
        "participant_id\tsession\themi\tanterior\thippocampus\tflag\n"
        "sub-01\tn/a\tL\t64.0\t64.0\tpoor registration\n"
        "sub-01\tn/a\tR\t64.0\t64.0\tn/a\n"
    )
    assert crop_row(crops["left"]).flag == "poor registration"
    assert crop_row(crops["right"]).flag == ""

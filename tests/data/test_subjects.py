"""hsftrain.data.subjects: the subject id format and its inverse."""

from __future__ import annotations

from pathlib import Path

from hsftrain.data.subjects import id_stem, parse_subject_id, subject_id


def test_subject_id_round_trip() -> None:
    sid = subject_id("msd", "t1", Path("sub-01") / "anat" / "sub-01_T1w.nii.gz")
    assert sid == "msd/t1/sub-01/anat/sub-01_T1w.nii.gz"
    assert parse_subject_id(sid) == ("msd", "t1", "sub-01/anat/sub-01_T1w.nii.gz")
    assert parse_subject_id("msd/t1") == ("msd", "t1", "")


def test_id_stem() -> None:
    assert id_stem(Path("a/sub-01_img.nii.gz"), "*_img.nii.gz") == "sub-01"
    assert id_stem(Path("a/T1w.nii.gz"), "sub-*/anat/T1w.nii.gz") == "T1w"

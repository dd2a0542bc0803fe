"""``hsftrain data collect``: segmentation outputs (HSF and BIDS layouts) + ratings ->
training pairs, on hand-made output trees of tiny volumes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.collect.api import MANIFEST, collect, init_ratings
from hsftrain.collect.outputs import CollectError, find_crops
from hsftrain.collect.ratings import read_ratings
from hsftrain.hub.fetch import file_hash

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _save(
    path: Path, value: int, shape: tuple[int, int, int] = (16, 20, 16), affine=AFFINE
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros(shape, np.uint8)
    data[4:10, 5:12, 4:10] = value
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _hsf(root: Path) -> Path:
    """Two crop inputs beside their outputs (a/s1, s2) and a whole head (head)."""
    for stem in ("a/s1", "s2"):
        _save(root / f"{stem}.nii.gz", 7)
        _save(root / f"{stem}_hippocampus_seg.nii.gz", 1)
    _save(root / "head.nii.gz", 9, (24, 24, 24))
    _save(root / "head_hippocampus_seg.nii.gz", 1, (24, 24, 24))
    for side in ("left", "right"):
        _save(root / f"head_hippocampus_crop_{side}.nii.gz", 5)
        _save(root / f"head_hippocampus_seg_crop_{side}.nii.gz", 2)
    return root


def _ratings(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["subject\tside\trating\tnote"] + ["\t".join((*r, "")) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / MANIFEST, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_finds_crop_inputs_and_whole_head_sides(tmp_path: Path) -> None:
    crops = find_crops(_hsf(tmp_path / "seg"))
    assert [(c.subject, c.side) for c in crops] == [
        ("a/s1", "n/a"),
        ("head", "left"),
        ("head", "right"),
        ("s2", "n/a"),
    ]
    head = crops[1]
    assert head.image.name == "head_hippocampus_crop_left.nii.gz"
    assert head.prediction.name == "head_hippocampus_seg_crop_left.nii.gz"


def test_pass_fix_fail_manifest_and_rerun(tmp_path: Path) -> None:
    seg = _hsf(tmp_path / "seg")
    fixed = tmp_path / "fixed"
    _save(fixed / "head_left_lbl.nii.gz", 3)
    ratings = _ratings(
        tmp_path / "qc_ratings.tsv",
        [
            ("a/s1", "n/a", "pass"),
            ("head", "left", "fix"),
            ("head", "right", "fail"),
            ("s2", "crop", "fix"),
        ],
    )
    out = tmp_path / "train"
    collect(seg, ratings, out, corrected=fixed)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "a_s1_img.nii.gz",
        "a_s1_lbl.nii.gz",
        "head_left_img.nii.gz",
        "head_left_lbl.nii.gz",
        MANIFEST,
    ]
    assert np.asarray(nib.load(str(out / "head_left_lbl.nii.gz")).dataobj).max() == 3
    assert np.asarray(nib.load(str(out / "a_s1_img.nii.gz")).dataobj).max() == 7
    rows = {r["id"]: r for r in _manifest(out)}
    assert rows["head_left"]["kind"] == "corrected"
    assert rows["a_s1"]["kind"] == "pass"
    assert rows["a_s1"]["label_xxh3_64"] == file_hash(out / "a_s1_lbl.nii.gz")
    assert rows["head_left"]["source_label"] == str((fixed / "head_left_lbl.nii.gz").resolve())
    # a rerun with one more correction adds it and keeps the rest
    _save(fixed / "s2_lbl.nii.gz", 4)
    before = (out / "a_s1_lbl.nii.gz").stat().st_mtime_ns
    collect(seg, ratings, out, corrected=fixed)
    assert set(r["id"] for r in _manifest(out)) == {"a_s1", "head_left", "s2"}
    assert (out / "a_s1_lbl.nii.gz").stat().st_mtime_ns == before


def test_a_changed_correction_is_not_overwritten_silently(tmp_path: Path) -> None:
    seg = _hsf(tmp_path / "seg")
    fixed = tmp_path / "fixed"
    _save(fixed / "head_left_lbl.nii.gz", 3)
    ratings = _ratings(tmp_path / "r.tsv", [("head", "left", "fix")])
    out = tmp_path / "train"
    collect(seg, ratings, out, corrected=fixed)
    kept = (out / "head_left_lbl.nii.gz").read_bytes()
    _save(fixed / "head_left_lbl.nii.gz", 4)
    with pytest.raises(CollectError, match="head_left_lbl.nii.gz.*--overwrite"):
        collect(seg, ratings, out, corrected=fixed)
    assert (out / "head_left_lbl.nii.gz").read_bytes() == kept
    collect(seg, ratings, out, corrected=fixed, overwrite=True)
    assert np.asarray(nib.load(str(out / "head_left_lbl.nii.gz")).dataobj).max() == 4


def test_corrected_label_on_another_grid_is_refused(tmp_path: Path) -> None:
    seg = _hsf(tmp_path / "seg")
    fixed = tmp_path / "fixed"
    _save(fixed / "head_left_lbl.nii.gz", 3, (16, 20, 17))
    ratings = _ratings(tmp_path / "r.tsv", [("head", "left", "fix"), ("s2", "n/a", "pass")])
    with pytest.raises(CollectError, match="head_left_lbl.nii.gz.*grid"):
        collect(seg, ratings, tmp_path / "train", corrected=fixed)
    assert not (tmp_path / "train").exists()


@pytest.mark.parametrize(
    "rows, words",
    [
        ([("nobody", "n/a", "pass")], "nobody (n/a)"),
        ([("s2", "n/a", "good")], "rating 'good'"),
        ([("s2", "up", "pass")], "side 'up'"),
        ([("s2", "n/a", "pass"), ("s2", "crop", "fail")], "rated twice"),
    ],
)
def test_bad_ratings_are_refused_by_name(tmp_path: Path, rows: list, words: str) -> None:
    seg = _hsf(tmp_path / "seg")
    with pytest.raises(CollectError, match=r"r\.tsv") as err:
        collect(seg, _ratings(tmp_path / "r.tsv", rows), tmp_path / "train")
    assert words in str(err.value)
    assert not (tmp_path / "train").exists()


def test_a_folder_without_segment_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CollectError, match="no output of hsftrain segment"):
        find_crops(tmp_path / "empty")


def test_crop_input_in_another_folder_needs_images(tmp_path: Path) -> None:
    seg = tmp_path / "pred"
    _save(tmp_path / "raw" / "s3.nii.gz", 7)
    _save(seg / "s3_hippocampus_seg.nii.gz", 1)
    with pytest.raises(CollectError, match="--images"):
        find_crops(seg)
    assert find_crops(seg, tmp_path / "raw")[0].image == tmp_path / "raw" / "s3.nii.gz"


def test_init_ratings_lists_every_crop_and_keeps_an_existing_file(tmp_path: Path) -> None:
    seg = _hsf(tmp_path / "seg")
    path = init_ratings(seg, tmp_path / "qc_ratings.tsv")
    ratings = read_ratings(path)
    assert set(ratings) == {("a/s1", "n/a"), ("head", "left"), ("head", "right"), ("s2", "n/a")}
    assert {r.rating for r in ratings.values()} == {"pass"}
    with pytest.raises(CollectError, match="exists"):
        init_ratings(seg, path)


def test_bids_layout(tmp_path: Path) -> None:
    raw, deriv = tmp_path / "bids", tmp_path / "bids" / "derivatives" / "hsftrain"
    _save(raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz", 7)
    anat = deriv / "sub-01" / "anat"
    dseg = _save(anat / "sub-01_space-T1w_desc-hippocampus_dseg.nii.gz", 1)
    dseg.with_name(dseg.name.replace(".nii.gz", ".json")).write_text(
        json.dumps({"Sources": ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]})
    )
    (anat / "sub-01_desc-hippocampus_volumes.tsv").write_text("participant_id\nsub-01\n")
    (deriv / "dataset_description.json").write_text(
        json.dumps({"DatasetLinks": {"raw": raw.resolve().as_uri()}})
    )
    head = deriv / "sub-02" / "ses-A" / "anat"
    for side in ("left", "right"):
        _save(head / f"sub-02_ses-A_space-T1w_desc-{side}hippocampuscrop_T1w.nii.gz", 5)
        _save(head / f"sub-02_ses-A_space-T1w_desc-{side}hippocampuscrop_dseg.nii.gz", 2)
    (head / "sub-02_ses-A_desc-hippocampus_volumes.tsv").write_text("participant_id\nsub-02\n")
    crops = find_crops(deriv)
    assert [(c.subject, c.side, c.image.name) for c in crops] == [
        ("sub-01", "n/a", "sub-01_T1w.nii.gz"),
        ("sub-02_ses-A", "left", "sub-02_ses-A_space-T1w_desc-lefthippocampuscrop_T1w.nii.gz"),
        ("sub-02_ses-A", "right", "sub-02_ses-A_space-T1w_desc-righthippocampuscrop_T1w.nii.gz"),
    ]
    ratings = _ratings(
        tmp_path / "r.tsv", [("sub-01", "n/a", "pass"), ("sub-02_ses-A", "right", "pass")]
    )
    collect(deriv, ratings, tmp_path / "train")
    assert {r["id"] for r in _manifest(tmp_path / "train")} == {"sub-01", "sub-02_ses-A_right"}

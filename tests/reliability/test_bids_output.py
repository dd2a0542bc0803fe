"""``hsftrain segment`` outputs as a lab meets them: a BIDS derivatives folder that the
official BIDS validator accepts, rerun skipping what is done; whole heads with each
hemisphere in its own native file (both layouts); every volumes table naming the hsftrain
version, models + hashes and preset; crop segmentations of a folder + glob run byte for
byte those of the HSF layout before these changes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xxhash

from hsftrain import __version__
from hsftrain.hub.fetch import file_hash
from tests.inference.conftest import MSD_NAMES, ORIENTATIONS, export_tiny, write_crop

from .conftest import assert_no_temporaries, assert_user_error, cli, files_below

VALIDATOR = shutil.which("bids-validator-deno")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("model") / "tiny.onnx", 3, MSD_NAMES)


def _dataset(root: Path) -> Path:
    """sub-01 and sub-02 with sessions A and B (tiny crops), sub-03 a whole head."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0"})
    )
    for i, sub in enumerate(("01", "02")):
        for ses in ("A", "B"):
            write_crop(
                root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_T1w.nii.gz",
                seed=i,
            )
    head = root / "sub-03" / "anat" / "sub-03_T1w.nii.gz"
    head.parent.mkdir(parents=True)
    shutil.copy(ORIENTATIONS / "RAS.nii.gz", head)
    return root


def _segment(model: Path, *words: object) -> list[object]:
    return ["segment", *words, f"model_paths=[{model}]", "segmentation.tta=false"]


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _validate(folder: Path) -> list[str]:
    """The errors the BIDS validator finds in ``folder`` (``code location`` each)."""
    assert VALIDATOR
    done = subprocess.run(
        [VALIDATOR, str(folder), "--format", "json"], capture_output=True, text=True, timeout=300
    )
    issues = json.loads(done.stdout)["issues"]["issues"]
    errors = [f"{i['code']} {i.get('location')}" for i in issues if i["severity"] == "error"]
    assert (done.returncode == 0) == (not errors), done.stderr[-2000:]
    return errors


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.skipif(VALIDATOR is None, reason="bids-validator-deno not installed (dev extra)")
def test_bids_derivatives_are_valid_and_a_rerun_skips_them(model: Path, tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    out = tmp_path / "derivatives" / "hsftrain"
    labels = ("--participant-label", "01", "03", "save_probabilities=true")
    result = cli(*_segment(model, root, out, "participant", *labels))
    assert result.code == 0, result.output[-3000:]
    assert _validate(out) == []
    assert_no_temporaries(out)

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    (generated,) = description["GeneratedBy"]
    assert generated["Name"] == "hsftrain" and generated["Version"] == __version__
    assert generated["CodeURL"].startswith("https://")
    assert generated["Models"] == [{"Name": "tiny.onnx", "xxh3_64": file_hash(model)}]
    assert description["DatasetLinks"] == {"raw": root.resolve().as_uri()}
    assert [r["name"] for r in _tsv(out / "dseg.tsv")] == MSD_NAMES[1:]

    anat = out / "sub-03" / "anat"
    head = nib.load(str(root / "sub-03" / "anat" / "sub-03_T1w.nii.gz"))
    sides = {}
    for hemi, side in (("L", "left"), ("R", "right")):
        path = anat / f"sub-03_space-T1w_desc-{side}hippocampus_dseg.nii.gz"
        image = nib.load(str(path))
        assert image.shape == head.shape
        np.testing.assert_array_equal(image.affine, head.affine)
        sides[hemi] = _labels(path)
        assert (sides[hemi] > 0).any()
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["SpatialReference"] == "bids:raw:sub-03/anat/sub-03_T1w.nii.gz"
    assert not ((sides["L"] > 0) & (sides["R"] > 0)).any()  # each side its own voxels
    # the left file holds the hippocampus on the subject's left (RAS: low x)
    assert np.argwhere(sides["L"]).mean(0)[0] < np.argwhere(sides["R"]).mean(0)[0]
    assert not list(anat.glob("sub-03_space-T1w_desc-hippocampus_dseg.nii.gz"))
    for side in ("left", "right"):  # each crop's probabilities, on the crop's grid
        probseg = nib.load(
            str(anat / f"sub-03_space-T1w_desc-{side}hippocampuscrop_probseg.nii.gz")
        )
        crop = _labels(anat / f"sub-03_space-T1w_desc-{side}hippocampuscrop_dseg.nii.gz")
        assert probseg.shape == (*crop.shape, 3)
    crop_anat = out / "sub-01" / "ses-A" / "anat"
    probs = nib.load(str(crop_anat / "sub-01_ses-A_space-T1w_desc-hippocampus_probseg.nii.gz"))
    dseg = _labels(crop_anat / "sub-01_ses-A_space-T1w_desc-hippocampus_dseg.nii.gz")
    values = probs.get_fdata()
    assert values.shape == (*dseg.shape, 3) and values.min() >= 0 and values.max() <= 1
    np.testing.assert_allclose(values.sum(-1), 1, atol=2 / 255)
    # one model, one view: the labels are the arg-max (largest component kept), where the
    # uint8 storage (steps of 1/255) leaves no tie
    ranked = np.sort(values, axis=-1)
    kept = (dseg > 0) & (ranked[..., -1] - ranked[..., -2] > 2 / 255)
    assert kept.sum() > 0.9 * (dseg > 0).sum()
    np.testing.assert_array_equal(values.argmax(-1)[kept], dseg[kept])
    assert (anat / "sub-03_desc-hippocampus_itksnap.txt").is_file()
    assert (anat / "sub-03_desc-hippocampus_freesurfer.txt").is_file()

    rows = _tsv(out / "volumes.tsv")
    assert [(r["participant_id"], r["session"], r["hemi"]) for r in rows] == [
        ("sub-01", "ses-A", "n/a"),
        ("sub-01", "ses-B", "n/a"),
        ("sub-03", "n/a", "L"),
        ("sub-03", "n/a", "R"),
    ]
    for row in rows:
        parts = float(row["anterior"]) + float(row["posterior"])
        assert float(row["hippocampus"]) == pytest.approx(parts)
        assert row["hsftrain_version"] == __version__
        assert row["models"] == f"tiny.onnx:{file_hash(model)}"
        assert row["preset"]
    subject_table = out / "sub-01" / "ses-A" / "anat" / "sub-01_ses-A_desc-hippocampus_volumes.tsv"
    assert _tsv(subject_table) == rows[:1]

    before = {p: (out / p).read_bytes() for p in files_below(out) if (out / p).is_file()}
    again = cli(*_segment(model, root, out, "participant", *labels))
    assert again.code == 0, again.output[-3000:]
    assert sum("already segmented" in line for line in again.infos) == 3
    after = {p: (out / p).read_bytes() for p in files_below(out) if (out / p).is_file()}
    assert after == before


def test_whole_head_keeps_the_hemispheres_apart_in_the_hsf_layout(
    model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = cli(
        *_segment(
            model,
            f"files.path={ORIENTATIONS}",
            "files.pattern=RAS.nii.gz",
            f"files.output_dir={out}",
            "qc=false",
        )
    )
    assert result.code == 0, result.output[-3000:]
    both = _labels(out / "RAS_hippocampus_seg.nii.gz")
    left = _labels(out / "RAS_hippocampus_seg_left.nii.gz")
    right = _labels(out / "RAS_hippocampus_seg_right.nii.gz")
    assert left.shape == right.shape == both.shape
    assert (left > 0).any() and (right > 0).any() and not ((left > 0) & (right > 0)).any()
    np.testing.assert_array_equal(np.where(left > 0, left, right), both)
    assert set(np.unique(left)) <= {0, 1, 2} and set(np.unique(right)) <= {0, 1, 2}
    with open(out / "volumes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["side"] for r in rows} == {"left", "right"}
    assert {(r["hsftrain_version"], r["models"]) for r in rows} == {
        (__version__, f"tiny.onnx:{file_hash(model)}")
    }
    assert (out / "RAS_hippocampus_labels_itksnap.txt").is_file()


#: Segmentations of the tiny crops by the HSF layout before the BIDS layout, the
#: per-side native files and the provenance columns were added (same model, same data).
CROP_HASHES = {
    "sub-01/anat/sub-01_T1w_hippocampus_seg.nii.gz": "faecfb9cc11dc610",
    "sub-01/anat/sub-01_T1w_hippocampus_uncertainty.nii.gz": "7ba5dfdee8f8333b",
    "sub-02/anat/sub-02_T1w_hippocampus_seg.nii.gz": "ebf9cbf7e1b1337c",
    "sub-02/anat/sub-02_T1w_hippocampus_uncertainty.nii.gz": "c0ee625f70dec07b",
}


def test_folder_and_glob_crops_are_segmented_byte_for_byte_as_before(
    model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    for i in (1, 2):
        write_crop(data / f"sub-0{i}" / "anat" / f"sub-0{i}_T1w.nii.gz", seed=i)
    words = (f"files.path={data}", "files.pattern=**/*T1w.nii.gz", "qc=false")
    result = cli("segment", *words, "segmentation=custom", f"model_paths=[{model}]")
    assert result.code == 0, result.output[-3000:]
    found = {
        p.relative_to(data).as_posix(): xxhash.xxh3_64_hexdigest(p.read_bytes())
        for p in sorted(data.rglob("*_hippocampus_*.nii.gz"))
    }
    assert found == CROP_HASHES


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["files.layout=flat"], ["files.layout='flat'", "hsf", "bids"]),
        (["files.layout=bids", "files.shard=1/2"], ["files.shard=1/2", "files.layout=hsf"]),
        (
            ["files.t2_pattern={id}_T2w.nii.gz", "save_probabilities=true"],
            ["save_probabilities=true", "multispectral", "save_probabilities=false"],
        ),
    ],
)
def test_bad_layout_choices_are_one_line(
    model: Path, tmp_path: Path, extra: list[str], words: list[str]
) -> None:
    data = tmp_path / "data"
    write_crop(data / "s1_T1w.nii.gz")
    before = files_below(data)
    out = cli(
        "segment", f"files.path={data}", "files.pattern=*.nii.gz", f"model_paths=[{model}]", *extra
    )
    assert_user_error(out, *words)
    assert files_below(data) == before


def test_a_failed_subject_has_a_row_in_the_group_table(model: Path, tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    broken = root / "sub-02" / "ses-A" / "anat" / "sub-02_ses-A_T1w.nii.gz"
    broken.write_bytes(b"not an image")
    out = tmp_path / "out"
    result = cli(*_segment(model, root, out, "participant", "--participant-label", "02"))
    assert result.code == 1 and "1 of 2 MRI(s) failed" in result.errors[-1]
    rows = _tsv(out / "volumes.tsv")
    assert list(rows[0])[:6] == ["participant_id", "session", "hemi", *MSD_NAMES[1:], "hippocampus"]
    assert list(rows[0])[6:] == ["flag", "hsftrain_version", "models", "preset"]
    failed, done = rows
    assert (failed["participant_id"], failed["session"], failed["anterior"]) == (
        "sub-02",
        "ses-A",
        "n/a",
    )
    assert failed["flag"].startswith(f"failed: {broken}")
    assert done["session"] == "ses-B" and float(done["hippocampus"]) > 0

"""Features meeting each other as a lab meets them: the QC report reading a BIDS
whole-head output's volumes table; a multispectral whole head whose T2 misses one side;
the report of a run on one file; BIDS volumes of a class named like the total;
the subjects left when a worker process dies (both layouts)."""

from __future__ import annotations

import csv
import shutil
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from hsftrain.collect.outputs import SegmentedCrop
from hsftrain.inference import workers
from hsftrain.report.cohort import crop_row
from tests.inference.conftest import MSD_NAMES, ORIENTATIONS, export_tiny, write_crop

from .conftest import cli

HELDOUT = Path(__file__).resolve().parents[2] / "src/hsftrain/assets/sample/msd_heldout"


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


def test_a_t2_missing_one_side_of_a_whole_head_flags_that_side_only(tmp_path: Path) -> None:
    model = export_tiny(tmp_path / "tiny.onnx", 3, MSD_NAMES)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(ORIENTATIONS / "RAS.nii.gz", data / "s1_T1w.nii.gz")
    image = nib.load(str(ORIENTATIONS / "RAS.nii.gz"))
    t2 = np.asarray(image.dataobj).astype(np.float32)
    t2[: t2.shape[0] * 3 // 4] = 0  # RAS: the T2 holds the right side of the head only
    nib.save(nib.Nifti1Image(t2, image.affine), str(data / "s1_T2w.nii.gz"))
    result = cli(
        "segment", f"files.path={data}", "files.pattern=*_T1w.nii.gz",
        "files.t2_pattern={id}_T2w.nii.gz", f"multispectral.t2_model_paths=[{model}]",
        f"model_paths=[{model}]", "segmentation.tta=false", "qc=false",
    )  # fmt: skip
    assert result.code == 0, result.output[-3000:]
    with open(data / "volumes.csv", newline="") as f:
        flags = {row["side"]: row["flag"] for row in csv.DictReader(f)}
    assert "the T2 does not cover the left crop" in flags["left"]
    assert "left crop" not in flags["right"]


def test_segmenting_one_file_writes_its_report_beside_it(tmp_path: Path) -> None:
    image = sorted(HELDOUT.glob("*_img.nii.gz"))[0]
    shutil.copy(image, tmp_path / image.name)
    result = cli("segment", f"files.path={tmp_path / image.name}", "segmentation=demo")
    assert result.code == 0, result.output[-3000:]
    assert (tmp_path / "report.html").is_file()
    assert not any("no QC report" in m for m in result.output.splitlines())


def test_a_class_named_hippocampus_is_not_counted_twice_in_bids_volumes(tmp_path: Path) -> None:
    model = export_tiny(tmp_path / "whole.onnx", 2, ["background", "hippocampus"])
    mri = write_crop(tmp_path / "data" / "s1_T1w.nii.gz")
    out = tmp_path / "out"
    result = cli(
        "segment", f"files.path={mri.parent}", "files.pattern=*.nii.gz", "files.layout=bids",
        f"files.output_dir={out}", f"model_paths=[{model}]", "segmentation.tta=false", "qc=false",
    )  # fmt: skip
    assert result.code == 0, result.output[-3000:]
    seg = next(out.rglob("*_desc-hippocampus_dseg.nii.gz"))
    image = nib.load(str(seg))
    voxels = int((np.asarray(image.dataobj) == 1).sum())
    assert voxels
    with open(out / "volumes.tsv", newline="") as f:
        (row,) = csv.DictReader(f, delimiter="\t")
    assert float(row["hippocampus"]) == voxels * float(np.prod(image.header.get_zooms()))


class _PoolThatBreaks(ProcessPoolExecutor):
    """A pool whose workers died (e.g. out of memory) once two subjects were handed out."""

    submitted = 0

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        _PoolThatBreaks.submitted += 1
        if _PoolThatBreaks.submitted > 2:
            raise BrokenProcessPool("A child process terminated abruptly")
        return super().submit(*args, **kwargs)


def _three_crops_and_a_pool_that_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path]:
    """A tiny model and three crops, segmented by workers of :class:`_PoolThatBreaks`."""
    model = export_tiny(tmp_path / "tiny.onnx", 3, MSD_NAMES)
    data = tmp_path / "data"
    for i in range(3):
        write_crop(data / f"s{i}_T1w.nii.gz", seed=i)
    monkeypatch.setattr(workers, "ProcessPoolExecutor", _PoolThatBreaks)
    monkeypatch.setattr(_PoolThatBreaks, "submitted", 0)
    return model, data


def test_subjects_left_when_a_worker_dies_fail_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = _three_crops_and_a_pool_that_breaks(tmp_path, monkeypatch)
    result = cli(
        "segment", f"files.path={data}", "files.pattern=*.nii.gz", f"model_paths=[{model}]",
        "segmentation.tta=false", "qc=false", "report=false", "hardware.jobs=2",
    )  # fmt: skip
    assert result.code == 1 and "Traceback" not in result.output, result.output[-3000:]
    assert any("s2_T1w.nii.gz: the worker process segmenting it died" in e for e in result.errors)
    with open(data / "volumes.csv", newline="") as f:
        flags = {row["subject"]: row["flag"] for row in csv.DictReader(f)}
    assert flags["s2_T1w"].startswith("failed: ") and not flags["s0_T1w"]


def test_a_dead_worker_leaves_a_bids_row_in_the_bids_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = _three_crops_and_a_pool_that_breaks(tmp_path, monkeypatch)
    out = tmp_path / "out"
    result = cli(
        "segment", f"files.path={data}", "files.pattern=*.nii.gz", f"model_paths=[{model}]",
        "segmentation.tta=false", "qc=false", "report=false", "hardware.jobs=2",
        "files.layout=bids", f"files.output_dir={out}",
    )  # fmt: skip
    assert result.code == 1, result.output[-3000:]
    with open(out / "volumes.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert "subject" not in rows[0]
    failed = [r for r in rows if r["flag"].startswith("failed: ")]
    assert [r["participant_id"] for r in failed] == ["sub-s2T1w"]

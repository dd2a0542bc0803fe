"""The retraining loop from the command line on tiny phantoms: segment -> rate -> collect
-> finetune -> evaluate -> publish -> segment with the published preset; and collect's
bad inputs (one line, nothing written)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import TINY
from tests.reliability.conftest import assert_no_temporaries, assert_user_error, cli, files_below


@pytest.fixture(scope="module")
def segmented(
    tmp_path_factory: pytest.TempPathFactory, phantoms: Path, trained: Path
) -> tuple[Path, Path]:
    """Four phantoms (new/) segmented by the tiny trained model into pred/."""
    root = tmp_path_factory.mktemp("loop")
    new = root / "new"
    new.mkdir()
    for img in sorted(phantoms.glob("*_img.nii.gz"))[:4]:
        shutil.copy(img, new / img.name)
        label = img.name.replace("_img", "_lbl")
        shutil.copy(phantoms / label, new / label)
    result = cli(
        "export", f"ckpt={trained / 'checkpoints' / 'last.ckpt'}", f"out={root / 'base.onnx'}"
    )
    assert result.code == 0, result.output[-3000:]
    result = cli(
        "segment",
        f"files.path={new}",
        "files.pattern=*_img.nii.gz",
        f"files.output_dir={root / 'pred'}",
        "segmentation=custom",
        f"model_paths=[{root / 'base.onnx'}]",
        "segmentation.tta=false",
    )
    assert result.code == 0, result.output[-3000:]
    return root, new


def test_the_loop_end_to_end(segmented: tuple[Path, Path], trained: Path) -> None:
    root, new = segmented
    pred, ratings = root / "pred", root / "qc_ratings.tsv"
    assert (
        cli("data", "collect", pred, "--ratings", ratings, "--init-ratings", "--images", new).code
        == 0
    )
    lines = ratings.read_text().splitlines()
    assert lines[0] == "subject\tside\trating\tnote" and len(lines) == 5
    # the reviewer's ratings: one pass, two fixed, one failed
    rated = {
        "sub-000_img": "pass",
        "sub-001_img": "fix",
        "sub-002_img": "fix",
        "sub-003_img": "fail",
    }
    ratings.write_text(
        lines[0] + "\n" + "".join(f"{s}\tn/a\t{r}\tseen\n" for s, r in rated.items())
    )
    corrected = root / "corrected"
    corrected.mkdir()
    for sid in ("sub-001", "sub-002"):
        shutil.copy(new / f"{sid}_lbl.nii.gz", corrected / f"{sid}_lbl.nii.gz")
    out = root / "collected"
    args = (
        "data",
        "collect",
        pred,
        "--ratings",
        ratings,
        "--out",
        out,
        "--corrected",
        corrected,
        "--images",
        new,
    )
    result = cli(*args)
    assert result.code == 0, result.output[-3000:]
    assert sorted(p.name for p in out.glob("*_lbl.nii.gz")) == [
        "sub-000_lbl.nii.gz",
        "sub-001_lbl.nii.gz",
        "sub-002_lbl.nii.gz",
    ]
    assert (out / "manifest.tsv").read_text().count("\tcorrected\t") == 2
    assert cli(*args).code == 0  # a rerun changes nothing
    result = cli(
        "finetune",
        *TINY,
        "datasets=folder",
        f"datasets.path={out}",
        f"datasets.output_path={root / 'runs'}",
        f"finetuning.pretrained={trained / 'checkpoints' / 'last.ckpt'}",
        "run_name=ft",
        "export_onnx=true",
    )
    assert result.code == 0, result.output[-3000:]
    run = root / "runs" / "ft"
    assert cli("hub", "publish", run, "--license", "CC-BY-4.0").code == 0
    result = cli(
        "segment",
        f"files.path={new}",
        "files.pattern=*_img.nii.gz",
        f"files.output_dir={root / 'pred_ft'}",
        f"segmentation={run / 'model.preset.yaml'}",
    )
    assert result.code == 0, result.output[-3000:]
    assert len(list((root / "pred_ft").glob("*_hippocampus_seg.nii.gz"))) == 4
    result = cli(
        "evaluate", f"pred={root / 'pred_ft'}", f"ref={new}/*_lbl.nii.gz", f"out={root / 'ev'}"
    )
    assert result.code == 0, result.output[-3000:]
    assert "CC-BY-4.0" in (run / "model.card.md").read_text()


def test_collect_refuses_a_folder_without_segment_output(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "r.tsv").write_text("subject\tside\trating\tnote\n")
    result = cli(
        "data",
        "collect",
        tmp_path / "empty",
        "--ratings",
        tmp_path / "r.tsv",
        "--out",
        tmp_path / "out",
    )
    assert_user_error(result, "empty", "no output of hsftrain segment")
    assert not (tmp_path / "out").exists()


def test_collect_refuses_unknown_subjects_and_other_grids(
    segmented: tuple[Path, Path], tmp_path: Path
) -> None:
    root, new = segmented
    ratings = tmp_path / "r.tsv"
    ratings.write_text(
        "subject\tside\trating\tnote\nsub-000_img\tn/a\tpass\t\nsub-999\tn/a\tpass\t\n"
    )
    out = tmp_path / "out"
    result = cli(
        "data", "collect", root / "pred", "--ratings", ratings, "--out", out, "--images", new
    )
    assert_user_error(result, "r.tsv", "sub-999 (n/a)", "not in the segmentation output")
    ratings.write_text("subject\tside\trating\tnote\nsub-000_img\tn/a\tfix\t\n")
    corrected = tmp_path / "corrected"
    corrected.mkdir()
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)),
        str(corrected / "sub-000_lbl.nii.gz"),
    )
    result = cli(
        "data",
        "collect",
        root / "pred",
        "--ratings",
        ratings,
        "--out",
        out,
        "--images",
        new,
        "--corrected",
        corrected,
    )
    assert_user_error(result, "sub-000_lbl.nii.gz", "grid")
    assert files_below(out) == set()
    assert_no_temporaries(tmp_path, root)

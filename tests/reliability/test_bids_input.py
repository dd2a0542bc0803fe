"""``hsftrain segment`` on a BIDS dataset as a user runs it: the BIDS-App form and its
overrides, participant and session selection, T1w+T2w, rerun, and the bad inputs (one
line, exit 1, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.inference.conftest import MSD_NAMES, export_tiny, write_crop

from .conftest import assert_no_temporaries, assert_user_error, cli, files_below


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("model") / "tiny.onnx", 3, MSD_NAMES)


def _bids(root: Path, t2: bool = True) -> Path:
    """Two participants x two sessions of tiny crops, T1w and T2w, plus a derivatives
    folder and sourcedata that must never be taken as input."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"})
    )
    for i, sub in enumerate(("01", "02")):
        for ses in ("A", "B"):
            anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
            write_crop(anat / f"sub-{sub}_ses-{ses}_T1w.nii.gz", seed=i)
            if t2:
                write_crop(anat / f"sub-{sub}_ses-{ses}_T2w.nii.gz", seed=10 + i)
    write_crop(root / "derivatives" / "other" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    write_crop(root / "sourcedata" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    return root


def _segment(model: Path, *words: object) -> list[object]:
    return ["segment", *words, f"model_paths=[{model}]", "qc=false", "segmentation.tta=false"]


def _inputs_of(out: Path) -> set[str]:
    """The ``sub-X/ses-Y`` folders that received results (not the QC report's assets)."""
    paths = [p for p in map(Path, files_below(out)) if p.parts[0] != "report_assets"]
    return {"/".join(p.parts[:2]) for p in paths if len(p.parts) > 2}


def test_bids_app_form_segments_the_chosen_participant(model: Path, tmp_path: Path) -> None:
    root = _bids(tmp_path / "ds")
    out = root / "derivatives" / "hsftrain"
    raw = files_below(root)
    result = cli(*_segment(model, root, out, "participant", "--participant-label", "01"))
    assert result.code == 0, result.output[-3000:]
    assert _inputs_of(out) == {"sub-01/ses-A", "sub-01/ses-B"}
    assert files_below(root) - raw <= {f"derivatives/hsftrain/{p}" for p in files_below(out)} | {
        "derivatives/hsftrain"
    }
    assert_no_temporaries(out)
    again = cli(*_segment(model, root, out, "participant", "--participant-label", "sub-01"))
    assert again.code == 0, again.output[-3000:]
    assert any("already segmented" in line for line in again.infos), again.infos


def test_overrides_form_with_session_and_default_output(model: Path, tmp_path: Path) -> None:
    root = _bids(tmp_path / "ds")
    result = cli(
        *_segment(model, f"files.path={root}", "files.bids=true", "files.session_label=[B]")
    )
    assert result.code == 0, result.output[-3000:]
    assert _inputs_of(root / "derivatives" / "hsftrain") == {"sub-01/ses-B", "sub-02/ses-B"}


def test_t1w_with_its_t2w(model: Path, tmp_path: Path) -> None:
    root = _bids(tmp_path / "ds")
    out = tmp_path / "out"
    result = cli(
        *_segment(
            model, root, out, "participant", "--participant-label", "02", "--session-label", "A"
        ),
        "files.suffix=[T1w,T2w]",
    )
    assert result.code == 0, result.output[-3000:]
    assert any("sub-02_ses-A_T2w.nii.gz" in line for line in result.infos), result.infos
    assert _inputs_of(out) == {"sub-02/ses-A"}


def test_t2w_alone(model: Path, tmp_path: Path) -> None:
    root = _bids(tmp_path / "ds")
    out = tmp_path / "out"
    result = cli(*_segment(model, root, out, "participant", "files.suffix=T2w"))
    assert result.code == 0, result.output[-3000:]
    assert any("T2w" in p for p in files_below(out)), files_below(out)
    assert not any("T1w" in p for p in files_below(out) if "volumes" not in p)


@pytest.mark.parametrize(
    "words, make, message",
    [
        (["{root}/sub-01", "{out}", "participant"], "", ["not a BIDS dataset"]),
        (
            ["{root}", "{out}", "participant", "--participant-label", "03"],
            "",
            ["sub-03 not in", "sub-01, sub-02"],
        ),
        (
            ["{root}", "{out}", "participant", "--session-label", "C"],
            "",
            ["ses-C not found", "ses-A, ses-B"],
        ),
        (
            ["{root}", "{out}", "participant", "--session-label", "B", "files.suffix=[T1w,T2w]"],
            "no-t2",
            ["sub-02/ses-B has no T2w"],
        ),
        (["{root}", "{out}", "participant", "files.suffix=T2w"], "no-t2-at-all", ["no T2w MRI"]),
        (["{root}", "{root}/sub-01/results", "participant"], "", ["raw data"]),
        (["{root}", "{out}", "group"], "", ["analysis level 'group'"]),
        (["{root}", "{out}", "participant", "--participant-lable", "01"], "", ["unknown option"]),
    ],
    ids=[
        "not-bids",
        "unknown-participant",
        "unknown-session",
        "session-without-t2",
        "no-t2",
        "output-in-raw-data",
        "group-level",
        "misspelt-option",
    ],
)
def test_bad_bids_input(
    words: list[str], make: str, message: list[str], model: Path, tmp_path: Path
) -> None:
    root = _bids(tmp_path / "ds", t2=make != "no-t2-at-all")
    if make == "no-t2":
        (root / "sub-02" / "ses-B" / "anat" / "sub-02_ses-B_T2w.nii.gz").unlink()
    out = tmp_path / "out"
    before = files_below(tmp_path)
    args = [w.format(root=root, out=out) for w in words]
    assert_user_error(cli(*_segment(model, *args)), *message)
    assert files_below(tmp_path) == before


def test_help_shows_the_bids_app_form() -> None:
    out = cli("segment", "--help")
    assert out.code == 0
    text = " ".join(out.output.split())
    assert "BIDS_DIR OUTPUT_DIR participant [--participant-label 01 02]" in text
    assert "key=value..." in text and "files.participant_label" in text

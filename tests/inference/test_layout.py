"""Output layouts (HSF names, BIDS derivatives names) and the label look-up tables.

No maintained Python reader of the ITK-SNAP label description format or of the FreeSurfer
colour LUT format is installed here (nibabel reads FreeSurfer surfaces and MGH volumes,
not LUTs), so the tables are parsed with the grammar their formats publish: ITK-SNAP's
``IDX -R- -G- -B- -A- VIS MSH "LABEL"`` (comments ``#``) and FreeSurfer's
``FreeSurferColorLUT.txt`` ``No. Label-Name R G B A`` (comments ``#``, names without
spaces).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hsftrain import __version__
from hsftrain.cli.app import app
from hsftrain.config.compose import ConfigError
from hsftrain.data.labels import SUBFIELDS
from hsftrain.inference.layout import bids_outputs, choose_layout, outputs_of
from hsftrain.inference.luts import dseg_tsv, freesurfer_text, itksnap_text

ITKSNAP_LINE = re.compile(
    r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"([^"]*)"\s*$'
)
FREESURFER_LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def _matches(text: str, line_format: re.Pattern[str], what: str) -> list[re.Match[str]]:
    """The entries of a look-up table (blank and ``#`` comment lines skipped), each
    required to follow ``line_format``."""
    matches = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            match = line_format.match(line)
            assert match, f"not a {what} line: {line!r}"
            matches.append(match)
    return matches


def read_itksnap(text: str) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """ITK-SNAP label description file -> ``{index: (label, rgb)}``."""
    out = {}
    for match in _matches(text, ITKSNAP_LINE, "ITK-SNAP label description"):
        idx, r, g, b = (int(match[i]) for i in range(1, 5))
        assert all(0 <= c <= 255 for c in (r, g, b)) and 0 <= float(match[5]) <= 1
        out[idx] = (match[8], (r, g, b))
    return out


def read_freesurfer_lut(text: str) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """FreeSurfer colour LUT -> ``{value: (name, rgb)}``."""
    out = {}
    for match in _matches(text, FREESURFER_LINE, "FreeSurfer LUT"):
        value, rgb = int(match[1]), (int(match[3]), int(match[4]), int(match[5]))
        assert value not in out and all(0 <= c <= 255 for c in rgb)
        out[value] = (match[2], rgb)
    return out


def test_look_up_tables_parse_with_their_formats_and_agree() -> None:
    names = ["background", *SUBFIELDS[1:], "dentate gyrus"]
    itk = read_itksnap(itksnap_text(names))
    fs = read_freesurfer_lut(freesurfer_text(names))
    rows = list(csv.DictReader(dseg_tsv(names).splitlines(), delimiter="\t"))
    assert itk[0][0] == "Clear Label" and fs[0][0] == "Unknown"
    for value, name in enumerate(names):
        if value == 0:
            continue
        assert itk[value][0] == name
        assert fs[value][0] == name.replace(" ", "-")
        assert itk[value][1] == fs[value][1]
    assert [int(r["index"]) for r in rows] == list(range(1, len(names)))
    assert rows[-1]["abbreviation"] == "DG" and rows[-1]["name"] == "dentate gyrus"
    assert all(re.fullmatch(r"#[0-9a-f]{6}", r["color"]) for r in rows)
    r, g, b = itk[1][1]
    assert rows[0]["color"] == f"#{r:02x}{g:02x}{b:02x}"


def test_bids_names_keep_the_input_entities_and_each_side(tmp_path: Path) -> None:
    mri = tmp_path / "ds" / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_acq-hr_run-1_T2w.nii.gz"
    entities = {"sub": "01", "ses": "2", "acq": "hr", "run": "1", "suffix": "T2w"}
    out = bids_outputs(mri, tmp_path / "ds", tmp_path / "out", entities)
    assert out.folder == tmp_path / "out" / "sub-01" / "ses-2" / "anat"
    stem = "sub-01_ses-2_acq-hr_run-1"
    assert out.native("left").name == f"{stem}_space-T2w_desc-lefthippocampus_dseg.nii.gz"
    assert out.native("right").name == f"{stem}_space-T2w_desc-righthippocampus_dseg.nii.gz"
    assert out.segmentation.name == f"{stem}_space-T2w_desc-hippocampus_dseg.nii.gz"
    assert out.segmentation_crop("left").name == (
        f"{stem}_space-T2w_desc-lefthippocampuscrop_dseg.nii.gz"
    )
    assert out.image_crop("right").name == f"{stem}_space-T2w_desc-righthippocampuscrop_T2w.nii.gz"
    assert out.done == out.volumes and out.volumes.name == f"{stem}_desc-hippocampus_volumes.tsv"
    assert (out.participant, out.session) == ("sub-01", "ses-2")


def test_folder_input_in_the_bids_layout_is_named_from_the_subject(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    out = outputs_of(root / "site_1" / "s01 T1.nii.gz", root, tmp_path / "o", "bids")
    assert out.folder == tmp_path / "o" / "sub-site1s01T1" / "anat"
    assert out.native("left").name == "sub-site1s01T1_space-T1w_desc-lefthippocampus_dseg.nii.gz"
    with pytest.raises(ConfigError, match="files.layout=hsf"):
        outputs_of(root / "___.nii.gz", root, tmp_path / "o", "bids")


def test_layout_choice() -> None:
    assert choose_layout(None, bids_input=True) == "bids"
    assert choose_layout(None, bids_input=False) == "hsf"
    assert choose_layout("hsf", bids_input=True) == "hsf"
    with pytest.raises(ConfigError, match=r"files.layout='flat'.*hsf.*bids"):
        choose_layout("flat", bids_input=False)


def test_hsf_names_of_the_sides_and_tables(tmp_path: Path) -> None:
    out = outputs_of(tmp_path / "s1.nii.gz", tmp_path, None)
    assert out.native("crop") == out.segmentation == out.done
    assert out.native("left").name == "s1_hippocampus_seg_left.nii.gz"
    assert out.lut("itksnap").name == "s1_hippocampus_labels_itksnap.txt"


def test_evaluate_names_the_classes_of_a_per_side_segmentation(tmp_path: Path) -> None:
    from hsftrain.evaluation.classes import class_table

    table = tmp_path / "s1_hippocampus_volumes.csv"
    for side in ("left", "right", "crop_left"):
        assert class_table(tmp_path / f"s1_hippocampus_seg_{side}.nii.gz") == table


def test_version_option_prints_the_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"hsftrain {__version__}"

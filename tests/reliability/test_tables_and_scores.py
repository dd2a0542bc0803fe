"""Tables are never trusted blindly: ``hsftrain volumes merge`` checks every shard table
before writing ``volumes.csv``; ``hsftrain evaluate`` leaves classes absent from both
images out of the means, names classes from the prediction's model, and scores a
FreeSurfer aseg reference as whole hippocampus."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.inference.shards import Shard, merge_if_complete
from hsftrain.inference.writer import VOLUME_COLUMNS

from .conftest import assert_no_temporaries, assert_user_error, cli

HEADER = "subject,side,label,name,volume_mm3,voxel_count,flag\n"


def _rows(*subjects: str) -> str:
    return "".join(
        f"{s},left,1,anterior,{100 + i}.5,{100 + i},\n{s},left,2,posterior,{90 + i}.0,{90 + i},\n"
        for i, s in enumerate(subjects)
    )


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """Three sound shard tables and the volumes.csv an earlier merge wrote."""
    (tmp_path / "volumes.1-of-3.csv").write_text(HEADER + _rows("sub-01", "sub-02"))
    (tmp_path / "volumes.2-of-3.csv").write_text(HEADER + _rows("sub-03", "sub-04"))
    (tmp_path / "volumes.3-of-3.csv").write_text(HEADER + _rows("sub-05"))
    (tmp_path / "volumes.csv").write_text("the earlier merge\n")
    return tmp_path


def _merge_refused(folder: Path, *words: str) -> str:
    message = assert_user_error(cli("volumes", "merge", folder), *words)
    assert (folder / "volumes.csv").read_text() == "the earlier merge\n"  # kept untouched
    assert_no_temporaries(folder)
    return message


def test_sound_shards_merge_in_order(shards: Path) -> None:
    assert cli("volumes", "merge", shards).code == 0
    merged = (shards / "volumes.csv").read_text()
    rows = _rows("sub-01", "sub-02") + _rows("sub-03", "sub-04") + _rows("sub-05")
    # tables written before the provenance columns: merged with those columns left empty
    padded = "".join(f"{line},,,\n" for line in rows.splitlines())
    assert merged == ",".join(VOLUME_COLUMNS) + "\n" + padded


def test_table_cut_mid_row(shards: Path) -> None:
    table = shards / "volumes.2-of-3.csv"
    text = table.read_text()
    table.write_text(text[: text.index("sub-04") + 22])  # "sub-04,left,1,anterior,1"
    message = _merge_refused(shards, str(table), "line 4", "cut", "files.shard=2/3", "rerun")
    assert message.count("\n") == 0
    # cut just after a full set of fields: 7 fields, but no final line break
    table.write_text(text.rstrip("\n"))
    _merge_refused(shards, str(table), "line 5", "cut")


def test_row_with_missing_fields(shards: Path) -> None:
    table = shards / "volumes.1-of-3.csv"
    table.write_text(HEADER + "sub-01,left,1,anterior,100.5\n" + _rows("sub-02"))
    _merge_refused(shards, str(table), "line 2", "5 fields, expected 7", "files.shard=1/3")


def test_binary_bytes_and_other_encodings(shards: Path) -> None:
    table = shards / "volumes.3-of-3.csv"
    table.write_bytes(HEADER.encode() + b"sub-05,left,1,\xff\xfe\x00\x13,1,1,\n")
    _merge_refused(shards, str(table), "line 2", "binary", "files.shard=3/3")
    table.write_bytes(HEADER.encode() + "sub-05,left,1,hippocampe_été,1.0,1,\n".encode("latin-1"))
    _merge_refused(shards, str(table), "line 2", "not UTF-8", "0xe9")


@pytest.mark.parametrize(
    "content, words",
    [
        ("", ["line 1", "empty"]),
        ("subject,side,label,volume_mm3\n", ["line 1", "columns", "expected"]),
        (HEADER + "sub-05,left,one,anterior,1.0,1,\n", ["line 2", "label 'one'"]),
        (HEADER + "sub-05,left,1,anterior,nan,1,\n", ["line 2", "volume_mm3 'nan'"]),
        (HEADER + "sub-05,left,1,anterior,1.0,-3,\n", ["line 2", "voxel_count"]),
        (HEADER + ",left,1,anterior,1.0,1,\n", ["line 2", "no subject"]),
        (HEADER + _rows("sub-05") + "\n", ["line 4", "0 fields"]),
        (HEADER + _rows("sub-05") + _rows("sub-05"), ["line 4", "twice"]),
        (HEADER + 'sub-05,left,1,"anterior,1.0,1,\n', ["line 2", "CSV"]),
    ],
)
def test_bad_rows_are_named(shards: Path, content: str, words: list[str]) -> None:
    table = shards / "volumes.3-of-3.csv"
    table.write_text(content)
    _merge_refused(shards, str(table), *words)


def test_failed_subject_rows_merge(shards: Path) -> None:
    failed = "sub-05,,,,,,failed: no T1 found\n"
    (shards / "volumes.3-of-3.csv").write_text(HEADER + failed)
    assert cli("volumes", "merge", shards).code == 0
    assert (shards / "volumes.csv").read_text().endswith(failed.replace("\n", ",,,\n"))


def test_subject_in_two_shards(shards: Path) -> None:
    (shards / "volumes.3-of-3.csv").write_text(HEADER + _rows("sub-04"))
    _merge_refused(shards, "sub-04", "volumes.2-of-3.csv", "volumes.3-of-3.csv", "every shard")


def test_shard_beyond_the_count(shards: Path) -> None:
    (shards / "volumes.4-of-3.csv").write_text(HEADER)
    _merge_refused(shards, "volumes.4-of-3.csv", "does not exist", "remove")


def test_last_shard_does_not_merge_a_broken_table(
    shards: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (shards / "volumes.2-of-3.csv").write_bytes(b"\x00\x01")
    logger = logging.getLogger("hsftrain.inference.shards")
    logger.addHandler(caplog.handler)
    try:
        assert merge_if_complete(Shard(3, 3), shards / "volumes.csv") is None
    finally:
        logger.removeHandler(caplog.handler)
    assert "was not merged" in caplog.text and "volumes.2-of-3.csv" in caplog.text
    assert (shards / "volumes.csv").read_text() == "the earlier merge\n"


# --- hsftrain evaluate -------------------------------------------------------------------

SHAPE = (12, 12, 8)


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image_type = nib.MGHImage if path.suffix == ".mgz" else nib.Nifti1Image
    nib.save(image_type(data.astype(np.int32), np.eye(4)), str(path))
    return path


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _two_classes() -> np.ndarray:
    """Class 1 (anterior) and class 2 (posterior) of a block on each side."""
    labels = np.zeros(SHAPE, np.int32)
    for xs in (slice(1, 4), slice(8, 11)):
        labels[xs, 2:6, 2:6] = 1
        labels[xs, 6:10, 2:6] = 2
    return labels


def test_class_absent_from_both_images_is_not_averaged(tmp_path: Path) -> None:
    ref = _two_classes()
    _save(tmp_path / "ref" / "s01_lbl.nii.gz", np.where(ref == 2, 0, ref))  # no class 2
    _save(tmp_path / "pred" / "s01_seg.nii.gz", np.where(ref == 2, 0, ref))
    _save(tmp_path / "ref" / "s02_lbl.nii.gz", ref)
    half = ref.copy()
    half[:6][half[:6] == 2] = 0  # class 2 found on one side only: Dice 2/3
    _save(tmp_path / "pred" / "s02_seg.nii.gz", half)
    out = tmp_path / "eval"
    result = cli(
        "evaluate", f"pred={tmp_path / 'pred'}", f"ref={tmp_path / 'ref'}", f"out={out}",
        "labels={1: anterior, 2: posterior}", "plots=false",
    )  # fmt: skip
    assert result.code == 0, result.output
    rows = {(r["subject"], r["label"]): r for r in _csv(out / "metrics.csv")}
    absent = rows["s01", "2"]
    assert math.isnan(float(absent["dice"])) and math.isnan(float(absent["hd95_mm"]))
    assert absent["note"].startswith("absent") and float(absent["ref_volume_mm3"]) == 0
    assert float(rows["s02", "2"]["dice"]) == pytest.approx(2 / 3)
    stats = {(r["label"], r["metric"]): r for r in _csv(out / "summary.csv")}
    dice = stats["2", "dice"]
    assert float(dice["mean"]) == pytest.approx(2 / 3)  # not (1 + 2/3) / 2
    assert (dice["n"], dice["absent"]) == ("1", "1")
    assert (stats["1", "dice"]["n"], stats["1", "dice"]["absent"]) == ("2", "0")
    (printed,) = [ln for ln in result.output.splitlines() if "posterior" in ln and "│" in ln]
    assert "0.667" in printed and "absent" in result.output  # the table: 2/3, not 0.833


def _segment_output(folder: Path, stem: str, labels: np.ndarray, names: list[str]) -> Path:
    """What hsftrain segment leaves for one subject: the segmentation and its table."""
    from hsftrain.inference.writer import outputs_for, volume_rows, write_volumes

    outputs = outputs_for(folder / f"{stem}.nii.gz", folder, None)
    write_volumes(volume_rows(stem, "crop", labels, names, 1.0), outputs.volumes)
    return _save(outputs.segmentation, labels)


def test_classes_are_named_from_the_predictions_model(tmp_path: Path) -> None:
    ref = _two_classes()
    names = ["background", "anterior", "posterior", "tail"]  # class 3 in neither image
    pred = _segment_output(tmp_path / "pred", "s01", ref, names)
    _save(tmp_path / "ref" / "s01_lbl.nii.gz", ref)
    args = ("evaluate", f"pred={pred.parent}", f"ref={tmp_path / 'ref'}", "plots=false")
    result = cli(*args, f"out={tmp_path / 'a'}")
    assert result.code == 0, result.output
    rows = _csv(tmp_path / "a" / "metrics.csv")
    assert [(r["label"], r["label_name"]) for r in rows] == [
        ("1", "anterior"),
        ("2", "posterior"),
        ("3", "tail"),
    ]
    assert rows[2]["note"].startswith("absent") and "anterior" in result.output
    # labels= still wins: a mapping renames, a list chooses the classes (model names kept)
    assert cli(*args, f"out={tmp_path / 'b'}", "labels={2: back}").code == 0
    assert [(r["label"], r["label_name"]) for r in _csv(tmp_path / "b" / "metrics.csv")] == [
        ("2", "back")
    ]
    assert cli(*args, f"out={tmp_path / 'c'}", "labels=[1]").code == 0
    assert _csv(tmp_path / "c" / "metrics.csv")[0]["label_name"] == "anterior"
    # pred_map changes what the values mean: the model's names no longer apply
    assert cli(*args, f"out={tmp_path / 'd'}", "pred_map={1: 1, 2: 1}").code == 0
    assert _csv(tmp_path / "d" / "metrics.csv")[0]["label_name"] == "label_1"


def test_unreadable_class_table_is_named_and_ignored(tmp_path: Path) -> None:
    pred = _segment_output(tmp_path / "pred", "s01", _two_classes(), ["bg", "a", "p"])
    table = tmp_path / "pred" / "s01_hippocampus_volumes.csv"
    table.write_bytes(b"subject,side,label,name\ns01,crop,1,\xff\n")
    _save(tmp_path / "ref" / "s01_lbl.nii.gz", _two_classes())
    out = tmp_path / "eval"
    result = cli("evaluate", f"pred={pred}", f"ref={tmp_path / 'ref'}", f"out={out}")
    assert result.code == 0, result.output
    assert any(str(table) in w and "class names not read" in w for w in result.warnings)
    assert [r["label_name"] for r in _csv(out / "metrics.csv")] == ["label_1", "label_2"]


def _aseg() -> np.ndarray:
    """A tiny FreeSurfer-like aseg: hippocampi 17 (left) and 53 (right) where the
    prediction's two classes are, white matter, ventricles, amygdalae around them."""
    whole = _two_classes() > 0
    aseg = np.full(SHAPE, 2, np.int32)
    aseg[6:] = 41
    aseg[:, :, 7] = 0
    aseg[:, 0, :7] = np.where(np.arange(SHAPE[0])[:, None] < 6, 4, 43)
    aseg[:, 11, :7] = np.where(np.arange(SHAPE[0])[:, None] < 6, 18, 54)
    aseg[:6][whole[:6]] = 17
    aseg[6:][whole[6:]] = 53
    return aseg


@pytest.mark.parametrize("ref_name", ["s01_lbl.nii.gz", "aseg.mgz"])
def test_freesurfer_aseg_is_scored_as_whole_hippocampus(tmp_path: Path, ref_name: str) -> None:
    pred = _save(tmp_path / "pred" / "s01_seg.nii.gz", _two_classes())
    ref = _save(tmp_path / "fs" / ref_name, _aseg())
    assert set(np.unique(_aseg())) == {0, 2, 4, 17, 18, 41, 43, 53, 54}
    out = tmp_path / "eval"
    result = cli("evaluate", f"pred={pred}", f"ref={ref}", f"out={out}", "plots=false")
    assert result.code == 0, result.output
    (row,) = _csv(out / "metrics.csv")
    assert (row["label"], row["label_name"], float(row["dice"])) == ("1", "hippocampus", 1.0)
    assert "FreeSurfer aseg" in result.output and "whole hippocampus" in result.output


def test_aseg_with_ref_map_only_says_which_pred_map_to_add(tmp_path: Path) -> None:
    pred = _save(tmp_path / "pred" / "s01_seg.nii.gz", _two_classes())
    ref = _save(tmp_path / "fs" / "aparc+aseg.mgz", _aseg())
    out = tmp_path / "eval"
    result = cli("evaluate", f"pred={pred}", f"ref={ref}", f"out={out}", "ref_map={17: 1, 53: 1}")
    assert result.code == 0, result.output
    assert any("pred_map={1: 1, 2: 1}" in w for w in result.warnings), result.warnings
    dice = {r["label"]: float(r["dice"]) for r in _csv(out / "metrics.csv")}
    assert dice["1"] == pytest.approx(2 * 0.5 / 1.5)  # as asked: anterior vs whole
    # the documented whole-head command: a whole-hippocampus prediction, ref_map given
    whole = _save(tmp_path / "pred" / "s01_seg.nii.gz", (_two_classes() > 0).astype(np.int32))
    result = cli(
        "evaluate", f"pred={whole}", f"ref={ref}", f"out={out}", "ref_map={17: 1, 53: 1}",
        "labels={1: hippocampus}",
    )  # fmt: skip
    assert result.code == 0 and not result.warnings, result.warnings
    assert float(_csv(out / "metrics.csv")[0]["dice"]) == 1.0


def test_not_an_aseg_is_left_as_it_is(tmp_path: Path) -> None:
    pred = _save(tmp_path / "pred" / "s01_seg.nii.gz", _two_classes())
    few = np.where(_aseg() == 17, 17, np.where(_aseg() == 53, 53, 0))  # 17 and 53 only
    ref = _save(tmp_path / "ref" / "s01_lbl.nii.gz", few)
    out = tmp_path / "eval"
    assert cli("evaluate", f"pred={pred}", f"ref={ref}", f"out={out}").code == 0
    assert {r["label"] for r in _csv(out / "metrics.csv")} == {"1", "2", "17", "53"}
    # labels naming an aseg value: the user compares raw values, nothing is merged
    ref = _save(tmp_path / "ref" / "s01_lbl.nii.gz", _aseg())
    assert cli("evaluate", f"pred={pred}", f"ref={ref}", f"out={out}", "labels=[17]").code == 0
    assert [r["label"] for r in _csv(out / "metrics.csv")] == ["17"]


def test_segment_then_evaluate_uses_the_models_class_names(tmp_path: Path) -> None:
    from tests.inference.conftest import MSD_NAMES, export_tiny, write_crop

    model = export_tiny(tmp_path / "tiny.onnx", 3, MSD_NAMES)
    write_crop(tmp_path / "data" / "s01.nii.gz")
    out = tmp_path / "seg"
    result = cli(
        "segment", f"files.path={tmp_path / 'data'}", "files.pattern=*.nii.gz",
        f"files.output_dir={out}", f"model_paths=[{model}]", "hardware=cpu", "qc=false",
        "segmentation.tta=false",
    )  # fmt: skip
    assert result.code == 0, result.output[-2000:]
    pred = out / "s01_hippocampus_seg.nii.gz"
    _save(tmp_path / "ref" / "s01_lbl.nii.gz", np.asarray(nib.load(str(pred)).dataobj))
    report = tmp_path / "eval"
    result = cli("evaluate", f"pred={out}", f"ref={tmp_path / 'ref'}", f"out={report}")
    assert result.code == 0, result.output
    names = [(r["label"], r["label_name"]) for r in _csv(report / "metrics.csv")]
    assert names == [("1", "anterior"), ("2", "posterior")]

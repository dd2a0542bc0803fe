"""Which classes ``hsftrain evaluate`` scores and what it calls them."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.evaluation.classes import (
    choose_names,
    class_table,
    is_freesurfer_aseg,
    model_names,
    ref_map_hint,
    whole_hippocampus,
)
from hsftrain.inference.writer import Outputs, volume_rows, write_volumes

WHOLEHEAD_ASEG = Path("/work/shared/data/wholehead_niivue/aparc.a2009s+aseg.mgz")


def test_class_table_is_the_one_segment_writes(tmp_path: Path) -> None:
    outputs = Outputs(tmp_path, "sub-01_T1w")
    assert class_table(outputs.segmentation) == outputs.volumes
    assert class_table(outputs.segmentation_crop("left")) == outputs.volumes
    assert class_table(tmp_path / "sub-01_seg.nii.gz") is None
    assert class_table(outputs.uncertainty("left")) is None


def test_model_names_from_the_subject_table(tmp_path: Path) -> None:
    outputs = Outputs(tmp_path, "s")
    labels = np.array([[[0, 1], [1, 0]]])
    rows = volume_rows("s", "left", labels, ["bg", "anterior", "posterior"], 1.0)
    rows += volume_rows("s", "right", labels, ["bg", "anterior", "posterior"], 1.0)
    write_volumes(rows, outputs.volumes)
    assert model_names(outputs.segmentation) == {1: "anterior", 2: "posterior"}
    assert model_names(tmp_path / "other_seg.nii.gz") == {}


def test_conflicting_names_are_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outputs = Outputs(tmp_path, "s")
    labels = np.ones((2, 2, 2), np.int64)
    rows = volume_rows("s", "left", labels, ["bg", "anterior"], 1.0)
    rows += volume_rows("s", "right", labels, ["bg", "head"], 1.0)
    write_volumes(rows, outputs.volumes)
    logger = logging.getLogger("hsftrain.evaluation.classes")
    logger.addHandler(caplog.handler)
    try:
        assert model_names(outputs.segmentation) == {}
    finally:
        logger.removeHandler(caplog.handler)
    assert "class names not read" in caplog.text and "'anterior' and 'head'" in caplog.text


def test_choose_names() -> None:
    model = {1: "anterior", 2: "posterior"}
    assert choose_names(None, model, [1]) == model  # every class of the model
    assert choose_names(None, model, [1, 5]) == {**model, 5: "label_5"}
    assert choose_names({2: "back"}, model, []) == {2: "back"}
    assert choose_names({1: "label_1", 4: "label_4"}, model, []) == {1: "anterior", 4: "label_4"}
    assert choose_names(None, {}, [3]) == {3: "label_3"}


def test_aseg_recognition_and_whole_hippocampus() -> None:
    assert is_freesurfer_aseg([0, 2, 4, 17, 41, 53])
    assert not is_freesurfer_aseg([0, 2, 17, 53])  # too few other structures
    assert not is_freesurfer_aseg([0, 1, 2, 3, 4, 5, 17])  # one hippocampus only
    pred = np.array([0, 1, 2, 2, 0])
    ref = np.array([2, 17, 53, 41, 17])
    whole_pred, whole_ref = whole_hippocampus(pred, ref)
    assert whole_pred.tolist() == [0, 1, 1, 1, 0] and whole_ref.tolist() == [0, 1, 1, 0, 1]


def test_ref_map_hint() -> None:
    aseg = [0, 2, 4, 17, 41, 43, 53]
    hint = ref_map_hint(aseg, [0, 1, 2], {17: 1, 53: 1})
    assert hint is not None and "pred_map={1: 1, 2: 1}" in hint
    assert ref_map_hint(aseg, [0, 1], {17: 1, 53: 1}) is None  # whole-hippocampus output
    assert ref_map_hint(aseg, [0, 1, 2], {17: 1, 53: 2}) is None  # sides kept apart
    assert ref_map_hint([0, 17, 53], [0, 1, 2], {17: 1, 53: 1}) is None  # not an aseg


def test_real_aparc_aseg_is_recognised() -> None:
    if not WHOLEHEAD_ASEG.is_file():
        pytest.skip(f"{WHOLEHEAD_ASEG} not available")
    values = np.unique(np.asarray(nib.load(str(WHOLEHEAD_ASEG)).dataobj))
    assert is_freesurfer_aseg(values)

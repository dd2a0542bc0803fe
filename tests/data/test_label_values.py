"""Which label values become classes: stray values (a few voxels of a value in a small
minority of maps) and values outside a dataset's tables are refused at discovery."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.data.discovery import discover
from hsftrain.data.labels import describe_counts, stray_values, value_counts
from hsftrain.data.nifti import DataError


def _maps(n: int, **extra: dict[int, int]) -> dict[str, dict[int, int]]:
    maps = {f"m{i}": {0: 5000, 1: 400, 2: 300} for i in range(n)}
    for name, counts in extra.items():
        maps[name] = {**maps[name], **counts}
    return maps


def test_a_few_voxels_in_one_map_are_stray() -> None:
    (stray,) = stray_values(_maps(8, m3={7: 20}))
    assert (stray.value, stray.source, stray.voxels, stray.maps, stray.total) == (7, "m3", 20, 1, 8)
    assert stray.reference == 300  # the smallest regular class


@pytest.mark.parametrize(
    "maps",
    [
        _maps(8, m3={7: 200}),  # as large as a class: kept (a class of its own)
        _maps(8, m3={7: 20}, m5={7: 20}),  # two maps of eight: more than one in ten
        _maps(1, m0={7: 20}),  # one map: nothing to compare with
        {"a": {0: 10, 1: 5}, "b": {0: 10, 2: 5}},  # no value in most maps: no reference
    ],
)
def test_values_that_are_not_stray(maps: dict[str, dict[int, int]]) -> None:
    assert stray_values(maps) == []


def test_two_maps_in_twenty_can_be_stray() -> None:
    assert [s.value for s in stray_values(_maps(20, m1={9: 3}, m2={9: 5}))] == [9]


def test_counts_and_their_description() -> None:
    counts = value_counts(np.array([[0, 7, 7], [9, 0, 0]]))
    assert counts == {0: 3, 7: 2, 9: 1}
    assert describe_counts({7: 2, 9: 1}) == "7: 2 voxels, 9: 1 voxel"


def _write(root: Path, sid: str, label: np.ndarray) -> None:
    image = np.random.default_rng(0).random(label.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / f"{sid}_img.nii.gz"))
    nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), str(root / f"{sid}_lbl.nii.gz"))


def _cfg(root: Path, names: dict[int, str] | None = None) -> dict[str, object]:
    pattern = {"mri": "*_img.nii.gz", "label": "{id}_lbl.nii.gz"}
    dataset = {"path": ".", "patterns": {"p": pattern}, "labels": None, "labels_names": names}
    return {"main_path": str(root), "datasets": {"d": dataset}}


def _label(values: dict[int, int]) -> np.ndarray:
    label = np.zeros((16, 16, 16), np.uint8)
    flat = label.reshape(-1)
    start = 0
    for value, voxels in values.items():
        flat[start : start + voxels] = value
        start += voxels
    return label


def test_discovery_refuses_a_stray_value_of_an_unmapped_dataset(tmp_path: Path) -> None:
    for i in range(8):
        _write(tmp_path, f"s{i}", _label({1: 300, 2: 200, **({7: 20} if i == 3 else {})}))
    with pytest.raises(DataError) as err:
        discover(_cfg(tmp_path))
    message = str(err.value)
    assert "s3_lbl.nii.gz: label value 7 (20 voxels, in 1 of 8 label maps)" in message
    assert "datasets.datasets.d.labels='{1: 1, 2: 2, 7: 0}'" in message


def test_discovery_refuses_a_value_outside_labels_names(tmp_path: Path) -> None:
    _write(tmp_path, "a", _label({1: 30, 2: 20, 5: 3}))
    with pytest.raises(DataError, match=r"\[5\] in .*a_lbl.nii.gz \(5: 3 voxels\) are not in"):
        discover(_cfg(tmp_path, {1: "DG", 2: "CA1"}))


def test_discovery_warns_about_values_no_map_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for sid in ("a", "b"):
        _write(tmp_path, sid, _label({1: 30, 3: 20}))
    with caplog.at_level(logging.WARNING):
        found = discover(_cfg(tmp_path))
    assert found.dataset_classes[0] == ["background", "label_1", "label_2", "label_3"]
    assert "no label map holds the value(s) [2]" in caplog.text

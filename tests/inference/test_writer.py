"""Output names, volumes and QC figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hsftrain.inference.writer import (
    Outputs,
    outputs_for,
    read_volumes,
    save_qc,
    volume_rows,
    write_volumes,
)


def test_output_names() -> None:
    out = Outputs(Path("/o"), "sub-01_T1w")
    assert out.segmentation.name == "sub-01_T1w_hippocampus_seg.nii.gz"
    assert out.segmentation_crop("left").name == "sub-01_T1w_hippocampus_seg_crop_left.nii.gz"
    assert out.image_crop("right").name == "sub-01_T1w_hippocampus_crop_right.nii.gz"
    assert out.uncertainty("left").name == "sub-01_T1w_hippocampus_uncertainty_crop_left.nii.gz"
    assert out.uncertainty("crop").name == "sub-01_T1w_hippocampus_uncertainty.nii.gz"
    assert out.qc("crop").name == "sub-01_T1w_hippocampus_qc.png"
    assert out.qc("right").name == "sub-01_T1w_hippocampus_qc_right.png"
    assert out.volumes.name == "sub-01_T1w_hippocampus_volumes.csv"


def test_outputs_next_to_input_or_mirrored(tmp_path: Path) -> None:
    mri = tmp_path / "data" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert outputs_for(mri, tmp_path / "data", None).folder == mri.parent
    mirrored = outputs_for(mri, tmp_path / "data", tmp_path / "out")
    assert mirrored.folder == tmp_path / "out" / "sub-01" / "anat"


def test_volumes_are_voxel_counts_times_voxel_volume(tmp_path: Path) -> None:
    label_map = np.zeros((4, 5, 6), dtype=np.uint8)
    label_map[0, :2] = 1  # 12 voxels
    label_map[3, 4, :3] = 2  # 3 voxels
    rows = volume_rows(
        "s", "left", label_map, ["background", "DG", "CA1", "", "SUB"], 0.5 * 0.5 * 1.2
    )
    assert [(r["label"], r["name"], r["voxel_count"]) for r in rows] == [
        (1, "DG", 12),
        (2, "CA1", 3),
        (4, "SUB", 0),
    ]
    assert rows[0]["volume_mm3"] == pytest.approx(12 * 0.5 * 0.5 * 1.2)
    path = write_volumes(rows, tmp_path / "v.csv")
    back = read_volumes(path)
    assert [r["name"] for r in back] == ["DG", "CA1", "SUB"] and back[1]["voxel_count"] == "3"


def test_qc_png(tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((12, 16, 10)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[4:8, 5:9, 3:6] = 2
    path = save_qc(image, labels, (1.0, 1.0, 2.0), tmp_path / "qc.png", "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    save_qc(image, np.zeros_like(labels), (1.0, 1.0, 1.0), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").is_file()


def test_qc_legend_names_each_label(tmp_path: Path) -> None:
    """The QC figure says which colour is which label."""
    from hsftrain.inference.writer import QC_COLOURS, legend_entries

    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    labels[3:5, 3:5, 3:5] = 9  # a value the names do not cover
    names = ["background", "anterior", "posterior", ""]
    entries = legend_entries(labels, names)
    assert [(v, n) for v, n, _ in entries] == [(1, "anterior"), (2, "posterior"), (9, "label 9")]
    assert entries[1][2] == tuple(QC_COLOURS[1])
    image = np.random.default_rng(0).normal(size=labels.shape).astype(np.float32)
    path = save_qc(image, labels, (1.0, 1.0, 1.0), tmp_path / "qc.png", "t", names)
    assert path.read_bytes()[:4] == b"\x89PNG"

"""The report's outlier marks and order, on hand-written cohorts; its viewer data."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from hsftrain.report.cohort import Row, score_rows
from hsftrain.report.page import write_viewer_data


def _head(subject: str, left: float, right: float) -> list[Row]:
    return [
        Row(subject, "left", {"CA": left / 2, "DG": left / 2}),
        Row(subject, "right", {"CA": right / 2, "DG": right / 2}),
    ]


def test_asymmetric_empty_and_failed_heads_come_first_in_that_order() -> None:
    rows = [r for i in range(6) for r in _head(f"sub-{i}", 3000 + 10 * i, 3020 - 10 * i)]
    rows += _head("sub-asym", 3000, 1400)  # right half of the left: asymmetry 0.73
    rows += [Row("sub-empty", "left", {"CA": 0.0, "DG": 1500.0}), *_head("sub-empty", 0, 0)[1:]]
    rows.append(Row("sub-failed", "n/a", failed="failed: the image is constant"))
    ranked = score_rows(rows)
    assert [r.subject for r in ranked[:2]] == ["sub-failed", "sub-empty"]
    assert "CA empty" in ranked[1].marks
    asym = [r for r in ranked if r.subject == "sub-asym"]
    assert all(r.asymmetry == 0.727 and "asymmetry 0.73" in r.marks for r in asym)
    assert {r.subject for r in ranked[:5]} >= {"sub-asym"}
    assert all(
        not r.marks for r in ranked if r.subject.startswith("sub-") and r.subject[4:].isdigit()
    )


def test_robust_z_marks_a_large_volume_and_a_high_uncertainty() -> None:
    rows = [
        Row(f"s{i}", "n/a", {"a": 1000.0 + 5 * i}, uncertainty=0.10 + 0.002 * i) for i in range(8)
    ]
    rows.append(Row("big", "n/a", {"a": 1600.0}, uncertainty=0.11))
    rows.append(Row("unsure", "n/a", {"a": 1010.0}, uncertainty=0.40))
    ranked = score_rows(rows)
    assert {ranked[0].subject, ranked[1].subject} == {"big", "unsure"}
    assert any(m.startswith("a z=+") for m in next(r for r in ranked if r.subject == "big").marks)
    assert any(
        m.startswith("uncertainty z=+")
        for m in ranked[[r.subject for r in ranked].index("unsure")].marks
    )
    assert all(not r.marks for r in ranked[2:])


def test_too_few_crops_give_no_z_scores() -> None:
    rows = score_rows([Row("a", "n/a", {"x": 100.0}), Row("b", "n/a", {"x": 5000.0})])
    assert all(not r.marks for r in rows)


def test_the_viewer_gets_a_gzipped_nifti_whatever_the_input_format(tmp_path: Path) -> None:
    labels = np.zeros((8, 9, 10), np.uint8)
    labels[2:4, 3:5, 4:6] = 1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.MGHImage(labels.astype(np.float32), affine), str(tmp_path / "img.mgz"))
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "seg.nii"))
    script = write_viewer_data(
        tmp_path / "s0.js", "s0", {"image": tmp_path / "img.mgz", "seg": tmp_path / "seg.nii"}
    ).read_text()
    data = json.loads(script[script.index("{") : script.rindex("}") + 1])
    assert data["centre_mm"] == [2.5, 3.5, 4.5]
    for name in ("image", "seg"):
        raw = gzip.decompress(base64.b64decode(data[name]))
        assert raw[344:348] == b"n+1\x00"  # the NIfTI-1 magic
        volume = nib.Nifti1Image.from_bytes(raw)
        assert np.array_equal(np.asarray(volume.dataobj), labels)

"""``benchmarks/segment_cpu.py``: real ``hsftrain segment`` processes, timed (``--quick``), an
engine the checkout does not know skipped with its error line, and the old code's outputs
compared with the new code's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "segment_cpu.py"


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("segment_cpu", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_quick_run_times_segment_and_skips_an_unknown_engine(tmp_path: Path) -> None:
    bench = _bench()
    if not bench.MSD.is_dir():
        pytest.skip(f"no MSD crops in {bench.MSD}")
    out = tmp_path / "segment_cpu.json"
    argv = ["--quick", "--settings", "single", "--engines", "onnxruntime,nope", "--cohort", "0"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    timed, skipped = report["results"]
    assert timed["engine"] == "onnxruntime" and timed["subjects"] == 2
    assert timed["crops_per_second"] > 0 and timed["cpu_s_median"] > 0
    assert skipped["engine"] == "nope" and "hardware.engine" in skipped["skipped"]
    assert report["commit"] and len(report["machine"]["load_average_1_5_15_min_after"]) == 3


def test_old_and_new_outputs_are_compared_voxel_by_voxel_and_volume_by_volume(
    tmp_path: Path,
) -> None:
    import nibabel as nib
    import numpy as np

    header = "subject,side,label,name,volume_mm3\n"
    for name, changed, volume in (("new", True, "102.0"), ("old", False, "100.0")):
        folder = tmp_path / name / "sub"
        folder.mkdir(parents=True)
        labels = np.zeros((10, 10, 10), dtype=np.uint8)
        labels[2:6, 2:6, 2:6] = 1
        if changed:
            labels[0, 0, 0] = 1  # one voxel in a thousand
        nib.save(nib.Nifti1Image(labels, np.eye(4)), folder / "a_hippocampus_seg.nii.gz")
        (tmp_path / name / "volumes.csv").write_text(
            header + f"a,crop,1,DG,{volume}\na,crop,2,CA1,50.0\n"
        )
    same = _bench().compare_outputs(tmp_path / "new", tmp_path / "old")
    assert same == {
        "label_maps": 1,
        "min_voxel_agreement": 0.999,
        "volumes": 2,
        "max_volume_difference_pct": 2.0,
    }

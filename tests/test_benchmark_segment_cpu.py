"""``benchmarks/segment_cpu.py --quick``: real ``hsftrain segment`` processes, timed, and an
engine the checkout does not know skipped with its error line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "segment_cpu.py"


@pytest.mark.slow
def test_quick_run_times_segment_and_skips_an_unknown_engine(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("segment_cpu", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
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

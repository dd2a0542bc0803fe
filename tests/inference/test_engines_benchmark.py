"""``benchmarks/engines.py --quick`` runs and writes its table (the full run is the lead's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "engines.py"


@pytest.mark.slow
def test_engines_benchmark_quick(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "engines.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {r["engine"] for r in result["rows"]} == {"onnxruntime", "openvino"}
    assert all(r["argmax_agreement"] >= 0.999 and r["median_s"] > 0 for r in result["rows"])
    assert result["versions"]["openvino"] != "not installed"
    assert result["machine"]["cpu_count"] and len(result["load_average_after"]) == 3

"""The data fingerprint of prepared subjects."""

from __future__ import annotations

from pathlib import Path

from hsftrain.config.compose import compose
from hsftrain.data.cache import prepare
from hsftrain.data.discovery import discover
from hsftrain.data.fingerprint import fingerprint


def test_fingerprint(phantoms: Path, tmp_path: Path) -> None:
    cfg = compose("config", ["datasets=synth", f"datasets.main_path={phantoms}"])
    subjects = prepare(discover(cfg.datasets), tmp_path, progress=False)
    fp = fingerprint(subjects)
    assert fp["subjects"] == 8 and fp["median_shape"] == [16, 20, 16]
    shapes = zip(fp["min_shape"], fp["median_shape"], fp["max_shape"], strict=True)
    assert all(a <= b <= c for a, b, c in shapes)
    assert fp["anisotropy"] >= 1.0 and len(fp["median_spacing_mm"]) == 3
    assert {"mean", "std", "p0.5", "p99.5"} <= set(fp["intensity"])

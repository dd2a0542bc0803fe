"""What a model was trained on (contrast, intensity fingerprint, volume range), measured on
the run's training crops at export and stored in the ONNX metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hsftrain.core.onnx_metadata import read_metadata
from hsftrain.export.api import export_checkpoint
from hsftrain.inference.contract import Contract


def test_exported_model_records_its_training_contract(tiny_ckpt: Path, tmp_path: Path) -> None:
    meta = read_metadata(export_checkpoint(tiny_ckpt, tmp_path / "m.onnx"))
    train = len(json.loads((tiny_ckpt.parent.parent / "split.json").read_text())["train"])
    assert meta["contrasts"] in (["T1"], ["T2"])
    fingerprint = meta["intensity_fingerprint"]
    assert fingerprint["images"] == train
    low, median, high = fingerprint["contrast_index"]
    assert low <= median <= high
    ranges = meta["volume_range_mm3"]
    assert set(ranges) <= {*meta["labels_names"][1:], "hippocampus"} and "hippocampus" in ranges
    assert all(0 < lo <= hi for lo, hi in ranges.values())
    contract = Contract.from_metadata([meta])  # what segment reads back
    assert contract.contrasts == tuple(meta["contrasts"])
    assert contract.contrast_range == (low, high)


def test_checkpoint_away_from_its_run_exports_without_contract(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    moved = shutil.copy(tiny_ckpt, tmp_path / "alone.ckpt")  # no split.json beside it
    meta = read_metadata(export_checkpoint(moved, tmp_path / "m.onnx"))
    assert not {"contrasts", "intensity_fingerprint", "volume_range_mm3"} & set(meta)
    assert meta["labels_names"]  # the rest as before

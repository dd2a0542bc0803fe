"""The benchmark scorers (``train_heldout.score``, ``inference_cpu.dice_scores``) give the
Dice that ``hsftrain segment`` + ``hsftrain evaluate`` report for the same crops and model."""

from __future__ import annotations

import csv
import importlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import nibabel as nib
import pytest
from typer.testing import CliRunner

from hsftrain.cli import app

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src/hsftrain/assets/sample/msd_heldout"
MODEL = ROOT / "src/hsftrain/assets/models/msd_small.onnx"
CASES = ("hippocampus_098", "hippocampus_099")


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ModuleType]]:
    """The two benchmark scripts, imported as they run (benchmarks/ on sys.path)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    modules = {name: importlib.import_module(name) for name in ("train_heldout", "inference_cpu")}
    yield modules
    for name in (*modules, "machine"):
        sys.modules.pop(name, None)


def cli_dice(tmp_path: Path, *extra: str) -> dict[tuple[str, int], float]:
    """``hsftrain segment`` then ``hsftrain evaluate`` of the two crops, as a user runs them:
    ``{(subject, label): Dice}`` from ``metrics.csv``."""
    data, seg, out = tmp_path / "data", tmp_path / "seg", tmp_path / "eval"
    data.mkdir()
    for case in CASES:
        for kind in ("img", "lbl"):
            shutil.copy(SAMPLE / f"{case}_{kind}.nii.gz", data)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "segment",
            f"files.path={data}",
            "files.pattern=*_img.nii.gz",
            f"files.output_dir={seg}",
            f"model_paths=[{MODEL}]",
            "roiloc.mode=crop",
            "hardware=onnxruntime",
            "qc=false",
            "report=false",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["evaluate", f"pred={seg}", f"ref={data}/*_lbl.nii.gz", f"out={out}", "surface=false"],
    )
    assert result.exit_code == 0, result.output
    with (out / "metrics.csv").open() as f:
        return {(r["subject"], int(r["label"])): float(r["dice"]) for r in csv.DictReader(f)}


@pytest.mark.parametrize("flip", [False, True])
def test_train_heldout_score_is_segment_plus_evaluate(
    tmp_path: Path, bench: dict[str, ModuleType], flip: bool
) -> None:
    extra = ["segmentation.tta=flip", "segmentation.fusion=mean"] if flip else []
    expected = cli_dice(tmp_path, *extra)
    images = [SAMPLE / f"{c}_img.nii.gz" for c in CASES]
    refs = [SAMPLE / f"{c}_lbl.nii.gz" for c in CASES]
    dice = bench["train_heldout"].score(MODEL, images, flip=flip, references=refs)
    assert set(dice) == {"anterior", "posterior"}
    for value, name in ((1, "anterior"), (2, "posterior")):
        wanted = [expected[(c, value)] for c in CASES]
        assert dice[name] == pytest.approx(wanted, abs=1e-6)
        assert 0.5 < min(dice[name])  # a real segmentation, not an empty one


def test_inference_cpu_dice_is_segment_plus_evaluate(
    tmp_path: Path, bench: dict[str, ModuleType]
) -> None:
    expected = cli_dice(tmp_path)
    cases = [(f"{c}.nii.gz", SAMPLE / f"{c}_img.nii.gz", SAMPLE / f"{c}_lbl.nii.gz") for c in CASES]
    scores = bench["inference_cpu"].dice_scores(MODEL, cases, [1, 2])
    for value in (1, 2):
        mean = sum(expected[(c, value)] for c in CASES) / len(CASES)
        assert scores["dice"][str(value)] == pytest.approx(mean, abs=1e-6)
    per_case = [(expected[(c, 1)] + expected[(c, 2)]) / 2 for c in CASES]
    assert scores["dice_per_case_mean"] == pytest.approx(per_case, abs=1e-6)
    assert scores["dice_mean"] == pytest.approx(sum(per_case) / len(per_case), abs=1e-6)
    for case, _, label in cases:  # the segmentations, on the crops' own grid
        assert scores["_pred"][case].shape == nib.load(str(label)).shape

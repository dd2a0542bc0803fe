"""Multispectral segmentation: T2 registered to the T1, both segmented, one consensus."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.config.compose import ConfigError, compose
from hsftrain.inference.alignment import map_onto, register_rigid
from hsftrain.inference.api import SegmentError, segment, settings_from_config
from hsftrain.inference.discovery import pair_t2
from hsftrain.inference.fusion import Fusion
from hsftrain.inference.image import load_volume
from hsftrain.inference.multispectral import CoverageFusion
from hsftrain.inference.writer import read_volumes

from .conftest import SHARED

ASHS = SHARED / "ashs_atlas_test" / "images"
runner = CliRunner()


def rigid(degrees: float, shift_mm: tuple[float, float, float]) -> np.ndarray:
    """4x4 rotation about the S axis then a shift (RAS mm)."""
    a = np.deg2rad(degrees)
    matrix = np.eye(4)
    matrix[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    matrix[:3, 3] = shift_mm
    return matrix


def phantom(points: np.ndarray) -> np.ndarray:
    """A smooth head-like intensity at RAS mm ``points`` (..., 3): three blobs."""
    centres = np.array([[-6.0, 4.0, 0.0], [7.0, -5.0, 3.0], [0.0, 8.0, -6.0]])
    weights = np.array([100.0, 60.0, 30.0])
    out = np.zeros(points.shape[:-1])
    for centre, weight in zip(centres, weights, strict=True):
        out += weight * np.exp(-(((points - centre) / np.array([6.0, 8.0, 5.0])) ** 2).sum(-1))
    return out


def write_pair(folder: Path, name: str, t2_to_t1: np.ndarray) -> tuple[Path, Path]:
    """A T1 crop (1 mm, 32 x 36 x 28) and a T2 slab (0.8 x 2 x 0.8 mm, inverted contrast)
    whose scanner coordinates are off by ``t2_to_t1``."""
    folder.mkdir(parents=True, exist_ok=True)
    t1_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    t1_affine[:3, 3] = [-16, -18, -14]
    t1_idx = np.stack(np.indices((32, 36, 28)), -1).astype(float)
    t1 = phantom(t1_idx @ t1_affine[:3, :3].T + t1_affine[:3, 3]) + 10
    t2_affine = np.diag([0.8, 2.0, 0.8, 1.0])
    t2_affine[:3, 3] = [-18, -10, -16]
    t2_idx = np.stack(np.indices((45, 10, 40)), -1).astype(float)
    t2_world = t2_idx @ t2_affine[:3, :3].T + t2_affine[:3, 3]
    in_t1 = t2_world @ t2_to_t1[:3, :3].T + t2_to_t1[:3, 3]
    t2 = 200 - phantom(in_t1)
    paths = folder / f"{name}_T1w.nii.gz", folder / f"{name}_T2w.nii.gz"
    nib.save(nib.Nifti1Image(t1.astype(np.float32), t1_affine), str(paths[0]))
    nib.save(nib.Nifti1Image(t2.astype(np.float32), t2_affine), str(paths[1]))
    return paths


def overrides(root: Path, model: Path, *extra: str) -> list[str]:
    return [
        f"files.path={root}",
        "files.pattern=**/*_T1w.nii.gz",
        "files.t2_pattern={id}_T2w.nii.gz",
        f"model_paths=[{model}]",
        "hardware=cpu",
        "qc=false",
        *extra,
    ]


def test_map_onto_is_exact_for_linear_fields() -> None:
    """Trilinear interpolation reproduces a linear function: the mapping is checked exactly."""
    src_affine = np.diag([0.8, 2.0, 0.8, 1.0])
    src_affine[:3, 3] = [-10, -8, -9]
    dst_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    dst_affine[:3, 3] = [-12, -9, -12]
    dst_to_src = rigid(7.0, (1.5, -2.0, 0.5))
    gradient = np.array([0.3, -0.2, 0.1])
    src_idx = np.stack(np.indices((25, 9, 24)), -1).astype(float)
    field = (src_idx @ src_affine[:3, :3].T + src_affine[:3, 3]) @ gradient
    mapped, covered = map_onto(field, src_affine, dst_affine, (24, 18, 24), dst_to_src)
    dst_idx = np.stack(np.indices((24, 18, 24)), -1).astype(float)
    dst_world = dst_idx @ dst_affine[:3, :3].T + dst_affine[:3, 3]
    expected = (dst_world @ dst_to_src[:3, :3].T + dst_to_src[:3, 3]) @ gradient
    src_vox = (dst_world @ dst_to_src[:3, :3].T + dst_to_src[:3, 3] - src_affine[:3, 3]) / [
        0.8,
        2.0,
        0.8,
    ]
    inside = ((src_vox >= 0) & (src_vox <= np.array([24, 8, 23]))).all(-1)
    assert covered[inside].all() and 0 < covered.sum() < covered.size
    np.testing.assert_allclose(mapped[inside], expected[inside], atol=1e-9)
    assert not mapped[~covered].any()
    two, _ = map_onto(np.stack([field, -field]), src_affine, dst_affine, (24, 18, 24), dst_to_src)
    np.testing.assert_allclose(two[1], -mapped)


def test_coverage_fusion_matches_fusion_when_everything_is_covered() -> None:
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(4), size=(5, 6, 7)).transpose(3, 0, 1, 2) for _ in range(5)]
    for method in ("vote", "mean"):
        plain, covering = Fusion(method), CoverageFusion(method)
        for p in probs:
            plain.add(p.astype(np.float32))
            covering.add(p.astype(np.float32))
        np.testing.assert_array_equal(covering.score().argmax(0), plain.label_map())
        np.testing.assert_allclose(covering.uncertainty(), plain.uncertainty(), atol=1e-6)
    # a prediction covering half the grid only counts there
    half = np.zeros((5, 6, 7), dtype=bool)
    half[:2] = True
    fusion = CoverageFusion("vote")
    fusion.add(probs[0])
    fusion.add(probs[1], half)
    assert fusion.count is not None
    assert (fusion.count[:2] == 2).all() and (fusion.count[2:] == 1).all()
    np.testing.assert_array_equal(fusion.score().argmax(0)[2:], probs[0].argmax(0)[2:])
    np.testing.assert_array_equal(fusion.uncertainty()[2:], 0.0)


def test_a_weighted_t2_prediction_outvotes_the_t1() -> None:
    """multispectral.t2_weight=3: one T2 vote counts as three T1 votes (worked by hand)."""
    t1 = np.zeros((3, 2, 1, 1), np.float32)
    t1[1] = 0.9  # class 1, confidently
    t1[0] = 0.1
    t2 = np.zeros((3, 2, 1, 1), np.float32)
    t2[2] = 0.6  # class 2
    t2[0] = 0.4
    for weight, winner in ((1.0, 1), (3.0, 2)):
        fusion = CoverageFusion("vote")
        fusion.add(t1)
        fusion.add(t2, weight=weight)
        assert (fusion.score().argmax(0) == winner).all()
    # weighted vote fractions 1/4 and 3/4 over 3 classes
    expected = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) / np.log(3)
    np.testing.assert_allclose(fusion.uncertainty(), expected, rtol=1e-6)
    mean = CoverageFusion("mean")
    mean.add(t1)
    mean.add(t2, weight=3.0)  # (0.9 + 3 x 0) / 4 < (0 + 3 x 0.6) / 4
    assert (mean.score().argmax(0) == 2).all()


def test_rigid_registration_recovers_a_known_transform(tmp_path: Path) -> None:
    truth = rigid(6.0, (2.0, -1.5, 1.0))
    t1, t2 = write_pair(tmp_path, "sub-01", truth)
    found, quality = register_rigid(load_volume(t2), load_volume(t1), registration_mm=1.0)
    points = np.array([[0.0, 0.0, 0.0], [8.0, 6.0, -4.0], [-8.0, -6.0, 4.0]])
    moved = points @ found[:3, :3].T + found[:3, 3]
    expected = points @ truth[:3, :3].T + truth[:3, 3]
    assert np.abs(moved - expected).max() < 0.8  # mm, below the T1 voxel
    assert quality > 0.1


def test_pairing_finds_each_t1s_t2(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_pair(tmp_path / name, name, np.eye(4))
    (tmp_path / "c" / "c_T2w.nii.gz").unlink()
    shutil.copy(tmp_path / "b" / "b_T2w.nii.gz", tmp_path / "b" / "b_T2w_run-2.nii.gz")
    # a broad pattern: a file that is some T1's only T2 is not a subject of its own
    t1s, _ = pair_t2(sorted(tmp_path.rglob("*.nii.gz")), "**/*.nii.gz", "*_T2w.nii.gz")
    names = [p.name for p in t1s]
    assert "a_T2w.nii.gz" not in names and "b_T2w.nii.gz" not in names
    assert {"a_T1w.nii.gz", "b_T1w.nii.gz", "c_T1w.nii.gz"} <= set(names)
    t1s, t2s = pair_t2(
        sorted(tmp_path.rglob("*_T1w.nii.gz")), "**/*_T1w.nii.gz", "{id}_T2w*.nii.gz"
    )
    assert [len(t2s[p]) for p in t1s] == [1, 2, 0]


def test_t1_and_t2_fused_in_both_spaces(tmp_path: Path, tiny_model: Path) -> None:
    root = tmp_path / "d"
    write_pair(root / "sub-01", "sub-01", rigid(4.0, (1.0, 0.0, -1.0)))
    write_pair(root / "sub-02", "sub-02", np.eye(4))
    out = tmp_path / "out"
    paths = segment(
        compose(
            "segment",
            overrides(root, tiny_model, f"files.output_dir={out}", "multispectral.t2_space=true"),
        )
    )
    assert [p.name for p in paths] == [
        "sub-01_T1w_hippocampus_seg.nii.gz",
        "sub-02_T1w_hippocampus_seg.nii.gz",
    ]  # the T2s are not subjects of their own
    for name in ("sub-01", "sub-02"):
        t1 = nib.load(str(root / name / f"{name}_T1w.nii.gz"))
        t2 = nib.load(str(root / name / f"{name}_T2w.nii.gz"))
        seg = nib.load(str(out / name / f"{name}_T1w_hippocampus_seg.nii.gz"))
        assert seg.shape == t1.shape and np.allclose(seg.affine, t1.affine)
        t2_seg = nib.load(str(out / name / f"{name}_T2w_hippocampus_seg.nii.gz"))
        assert t2_seg.shape == t2.shape and np.allclose(t2_seg.affine, t2.affine)
        unc = np.asarray(
            nib.load(str(out / name / f"{name}_T1w_hippocampus_uncertainty.nii.gz")).dataobj
        )
        assert 0 <= unc.min() and unc.max() <= 1 and unc.max() > 0  # T1 and T2 votes differ
    rows = read_volumes(out / "volumes.csv")
    assert {r["subject"] for r in rows} == {"sub-01/sub-01_T1w", "sub-02/sub-02_T1w"}
    assert all(r["flag"] == "" for r in rows)


def test_missing_or_ambiguous_t2(tmp_path: Path, tiny_model: Path) -> None:
    root = tmp_path / "d"
    write_pair(root, "a", np.eye(4))
    write_pair(root, "b", np.eye(4))
    (root / "a_T2w.nii.gz").unlink()  # a: T1 alone, flagged
    shutil.copy(root / "b_T2w.nii.gz", root / "b_T2w_run-2.nii.gz")  # b: two candidates
    cfg = compose(
        "segment",
        [*overrides(root, tiny_model), "files.pattern=*_T1w.nii.gz", "files.t2_pattern={id}_T2w*"],
    )
    with pytest.raises(SegmentError, match=r"b_T1w.nii.gz: 2 files match files.t2_pattern"):
        segment(cfg)
    rows = {r["subject"]: r["flag"] for r in read_volumes(root / "volumes.csv")}
    assert rows["a_T1w"].startswith("no T2 matches files.t2_pattern")
    assert rows["b_T1w"].startswith("failed: ")


def test_multispectral_settings_are_checked(tmp_path: Path, tiny_model: Path) -> None:
    good = overrides(tmp_path, tiny_model)
    settings = settings_from_config(compose("segment", good))
    assert settings.multispectral is not None
    assert settings.multispectral.t2_pattern == "{id}_T2w.nii.gz"
    assert settings.multispectral.t2_models is None
    assert settings.multispectral.t2_weight == 1.0
    paths = settings_from_config(
        compose("segment", [*good, f"multispectral.t2_model_paths=[{tiny_model}]"])
    )
    assert paths.multispectral is not None and paths.multispectral.t2_models
    for bad, key in (
        ("multispectral.registration_mm=0", "registration_mm"),
        ("multispectral.iterations=0", "iterations"),
        ("files.t2_pattern=/abs/*.nii.gz", "t2_pattern"),
        ("multispectral.t2_weight=0", "t2_weight"),
    ):
        with pytest.raises(ConfigError, match=key):
            settings_from_config(compose("segment", [*good, bad]))


@pytest.mark.slow
@pytest.mark.skipif(not ASHS.is_dir(), reason="shared ASHS atlas test set missing")
def test_ashs_mprage_and_tse(tmp_path: Path, tiny_model: Path) -> None:
    """Real anatomy: a whole-head 4 mm MPRAGE and its coronal TSE (1.56 x 1.56 x 4 mm)."""
    root = tmp_path / "ashs"
    root.mkdir()
    for name in ("sub01_mprage.nii.gz", "sub01_tse.nii.gz"):
        shutil.copy(ASHS / name, root / name)
    result = runner.invoke(
        app,
        [
            "segment",
            f"files.path={root}",
            "files.pattern=*_mprage.nii.gz",
            "files.t2_pattern={id}_tse.nii.gz",
            f"model_paths=[{tiny_model}]",
            "multispectral.t2_space=true",
            "hardware=cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    tse = nib.load(str(ASHS / "sub01_tse.nii.gz"))
    t2_seg = nib.load(str(root / "sub01_tse_hippocampus_seg.nii.gz"))
    assert t2_seg.shape == tse.shape and np.allclose(t2_seg.affine, tse.affine)
    rows = read_volumes(root / "volumes.csv")
    assert {r["side"] for r in rows} == {"left", "right"}
    assert not any("registration" in r["flag"] for r in rows)

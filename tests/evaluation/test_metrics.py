"""Metrics on small hand-built masks whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hsftrain.evaluation.metrics import (
    METRICS,
    OVERLAP_METRICS,
    SURFACE_METRICS,
    assd,
    dice,
    hd95,
    label_metrics,
    mask_metrics,
    surface_distances,
    surface_voxels,
    volume_mm3,
    volume_similarity,
)

ANISO = (1.0, 1.0, 2.5)


def plates(z_pred: list[int], z_ref: list[int], shape=(6, 6, 12)) -> tuple[np.ndarray, np.ndarray]:
    """Two full-width plates occupying the given slices along the last axis."""
    pred, ref = np.zeros(shape, bool), np.zeros(shape, bool)
    pred[:, :, z_pred] = True
    ref[:, :, z_ref] = True
    return pred, ref


def cube(shape=(10, 10, 10), lo=2, hi=6) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[lo:hi, lo:hi, lo:hi] = True
    return mask


def test_parallel_plates_anisotropic_distance_in_mm():
    pred, ref = plates([2], [6])  # 4 slices apart along the 2.5 mm axis
    assert hd95(pred, ref, ANISO) == pytest.approx(10.0)
    assert assd(pred, ref, ANISO) == pytest.approx(10.0)
    assert dice(pred, ref) == 0.0
    # the same voxels, isotropic spacing: 4 mm
    assert hd95(pred, ref) == pytest.approx(4.0)
    assert assd(pred, ref, (2.5, 2.5, 1.0)) == pytest.approx(4.0)


def test_thick_plates_known_distances():
    # pred slices 2,3 and ref slices 6,7 (every voxel is a surface voxel):
    # half of each surface is 3 slices (7.5 mm), half 4 slices (10 mm) from the other
    pred, ref = plates([2, 3], [6, 7])
    assert hd95(pred, ref, ANISO) == pytest.approx(10.0)
    assert assd(pred, ref, ANISO) == pytest.approx(8.75)


def test_hd95_is_max_of_directed_95th_percentiles():
    # ref: one 4x4 plate; pred: the same plate plus one voxel 10 slices (25 mm) away.
    # d(pred->ref) = 16 zeros and one 25: its 95th percentile (linear) is 0.2 * 25 = 5.
    # d(ref->pred) = 16 zeros. Pooled 95th percentile would be 0; the max of directed is 5.
    pred, ref = plates([0], [0], shape=(4, 4, 12))
    pred[0, 0, 10] = True
    d_pred, d_ref = surface_distances(pred, ref, ANISO)
    assert sorted(d_pred) == pytest.approx([0.0] * 16 + [25.0])
    assert np.all(d_ref == 0)
    assert hd95(pred, ref, ANISO) == pytest.approx(5.0)
    assert hd95(ref, pred, ANISO) == pytest.approx(5.0)  # symmetric
    assert np.percentile(np.concatenate([d_pred, d_ref]), 95) == 0.0
    assert assd(pred, ref, ANISO) == pytest.approx(25.0 / 33.0)


def test_identical_masks():
    mask = cube()
    m = mask_metrics(mask, mask, ANISO)
    assert m == {
        "dice": 1.0,
        "volume_similarity": 1.0,
        "pred_volume_mm3": 64 * 2.5,
        "ref_volume_mm3": 64 * 2.5,
        "hd95_mm": 0.0,
        "assd_mm": 0.0,
    }


@pytest.mark.parametrize("empty", ["pred", "ref"])
def test_one_mask_empty(empty):
    mask, nothing = cube(), np.zeros((10, 10, 10), bool)
    pred, ref = (nothing, mask) if empty == "pred" else (mask, nothing)
    m = mask_metrics(pred, ref, ANISO)
    assert m["dice"] == 0.0
    assert m["volume_similarity"] == 0.0
    assert math.isnan(m["hd95_mm"]) and math.isnan(m["assd_mm"])
    assert math.isnan(hd95(pred, ref)) and math.isnan(assd(pred, ref))
    assert m[f"{empty}_volume_mm3"] == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(pred, ref)


def test_both_empty():
    nothing = np.zeros((5, 5, 5), bool)
    m = mask_metrics(nothing, nothing, ANISO)
    assert m == {
        "dice": 1.0,
        "volume_similarity": 1.0,
        "pred_volume_mm3": 0.0,
        "ref_volume_mm3": 0.0,
        "hd95_mm": 0.0,
        "assd_mm": 0.0,
    }


def test_volumes_and_volume_similarity_by_hand():
    ref = np.zeros((4, 4, 4), bool)
    ref[0, 0, :4] = True  # 4 voxels
    pred = np.zeros((4, 4, 4), bool)
    pred[0, :2, :4] = True  # 8 voxels, containing ref
    # voxel = 1 * 1 * 2.5 = 2.5 mm^3: Vp = 20, Vr = 10, VS = 1 - 10 / 30 = 2/3
    assert volume_mm3(pred, ANISO) == pytest.approx(20.0)
    assert volume_mm3(ref, ANISO) == pytest.approx(10.0)
    assert volume_similarity(pred, ref) == pytest.approx(2 / 3)
    assert dice(pred, ref) == pytest.approx(2 * 4 / 12)
    m = mask_metrics(pred, ref, ANISO, surface=False)
    assert m["pred_volume_mm3"] == pytest.approx(20.0)
    assert m["volume_similarity"] == pytest.approx(2 / 3)
    assert set(m) == set(OVERLAP_METRICS)


def test_surface_voxels_of_a_cube_and_image_edge():
    mask = cube(lo=2, hi=6)  # 4^3 cube: 64 - 2^3 inner voxels
    assert surface_voxels(mask).sum() == 64 - 8
    full = np.ones((3, 3, 3), bool)  # the image edge counts as outside
    assert surface_voxels(full).sum() == 26


def test_label_metrics_per_label_and_surface_switch():
    ref = np.zeros((8, 8, 8), np.int64)
    ref[1:4, 1:4, 1:4] = 1
    ref[5:7, 5:7, 5:7] = 2
    pred = ref.copy()
    pred[5:7, 5:7, 5:7] = 0  # label 2 missed
    pred[0, 0, 0] = 3  # a label the reference lacks

    full = label_metrics(pred, ref, spacing=ANISO, surface=True)
    assert list(full) == [1, 2, 3]  # every non-zero value present in either map
    assert set(full[1]) == set(METRICS)
    assert full[1]["dice"] == 1.0 and full[1]["hd95_mm"] == 0.0
    assert full[2]["dice"] == 0.0 and math.isnan(full[2]["hd95_mm"])
    assert full[3]["dice"] == 0.0 and math.isnan(full[3]["assd_mm"])

    fast = label_metrics(pred, ref, labels=[1, 2, 4], spacing=ANISO, surface=False)
    assert list(fast) == [1, 2, 4]
    assert set(fast[1]) == set(OVERLAP_METRICS)
    assert not set(fast[1]) & set(SURFACE_METRICS)
    assert fast[4] == {  # absent from both: the "both empty" convention
        "dice": 1.0,
        "volume_similarity": 1.0,
        "pred_volume_mm3": 0.0,
        "ref_volume_mm3": 0.0,
    }


def test_invalid_inputs_raise_clearly():
    mask = cube()
    with pytest.raises(ValueError, match="shape"):
        dice(mask, mask[:-1])
    with pytest.raises(ValueError, match="spacing"):
        hd95(mask, mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        label_metrics(mask.astype(int), mask.astype(int), spacing=(1.0, 0.0, 1.0))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_matches_monai_surface_distances():
    """Same definitions as MONAI: max of directed 95th percentiles, pooled mean for ASSD."""
    pytest.importorskip("monai")
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(0)
    pred = ndimage.binary_dilation(rng.random((20, 16, 12)) > 0.97, iterations=2)
    ref = ndimage.binary_dilation(rng.random((20, 16, 12)) > 0.97, iterations=2)
    spacing = (1.0, 1.3, 2.5)

    def t(m):
        return torch.from_numpy(m[None, None].astype(np.float32))

    expected_hd95 = compute_hausdorff_distance(t(pred), t(ref), percentile=95, spacing=spacing)
    expected_assd = compute_average_surface_distance(
        t(pred), t(ref), symmetric=True, spacing=spacing
    )
    assert hd95(pred, ref, spacing) == pytest.approx(expected_hd95.item(), rel=1e-5)
    assert assd(pred, ref, spacing) == pytest.approx(expected_assd.item(), rel=1e-5)

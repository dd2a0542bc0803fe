"""Segmentation metrics on label arrays: Dice, HD95, ASSD, volume similarity, volumes.

Pure numpy/scipy functions of boolean masks (or label maps) and a voxel spacing in mm;
no torch, no file I/O. :func:`label_metrics` computes them for several labels at once and
is what both ``hsftrain evaluate`` and the training loop's validation call.

Definitions (``P`` = predicted mask, ``R`` = reference mask, ``|.|`` = voxel count,
``v`` = voxel volume in mm^3 = product of the spacing):

* **Dice** ``2 |P & R| / (|P| + |R|)``.
* **Volumes** ``V_P = |P| v`` and ``V_R = |R| v`` in mm^3.
* **Volume similarity** ``1 - |V_P - V_R| / (V_P + V_R)`` (1 = equal volumes, 0 = one is
  empty); it ignores where the voxels are.
* **Surface** of a mask: its voxels with at least one face neighbour (6-connectivity in
  3D) outside the mask; voxels on the edge of the image count as surface.
* **Directed surface distances** ``d(P -> R)``: for each surface voxel of ``P``, the
  Euclidean distance in mm (honouring anisotropic spacing) from its centre to the nearest
  surface-voxel centre of ``R`` (an exact distance transform,
  :func:`scipy.ndimage.distance_transform_edt` with ``sampling=spacing``).
* **HD95** ``max(q95(d(P -> R)), q95(d(R -> P)))``: the larger of the two *directed*
  95th percentiles (the definition of MONAI's ``compute_hausdorff_distance(percentile=95)``
  and of the Medical Segmentation Decathlon), not the 95th percentile of the pooled
  distances. ``q95`` is :func:`numpy.percentile` with linear interpolation.
* **ASSD** (average symmetric surface distance): the mean of the pooled distances,
  ``(sum d(P -> R) + sum d(R -> P)) / (n_P + n_R)`` over the ``n_P`` and ``n_R`` surface
  voxels.

Edge cases never raise and are chosen so that averages with :func:`numpy.nanmean` stay
meaningful:

============================  ======  ==========  ===========  =================
case                          Dice    HD95, ASSD  volume sim.  volumes
============================  ======  ==========  ===========  =================
both masks empty              1.0     0.0         1.0          0.0, 0.0
exactly one mask empty        0.0     NaN         0.0          0.0 and V
identical non-empty masks     1.0     0.0         1.0          V, V
============================  ======  ==========  ===========  =================

A distance to a mask that does not exist is undefined, hence NaN (not inf), which
``nanmean`` skips; the Dice of 0 still counts the miss. ``hsftrain evaluate`` does not
score a class that is in neither image (it reports it as absent, NaN, left out of the
means: :mod:`hsftrain.evaluation.scoring`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

#: Metrics computed for every label.
OVERLAP_METRICS: tuple[str, ...] = (
    "dice",
    "volume_similarity",
    "pred_volume_mm3",
    "ref_volume_mm3",
)
#: Metrics added when ``surface=True`` (distance transforms: slower).
SURFACE_METRICS: tuple[str, ...] = ("hd95_mm", "assd_mm")
#: Every metric, in report order.
METRICS: tuple[str, ...] = (
    "dice",
    "hd95_mm",
    "assd_mm",
    "volume_similarity",
    "pred_volume_mm3",
    "ref_volume_mm3",
)

Spacing = Sequence[float] | np.ndarray | None


def _spacing(spacing: Spacing, ndim: int) -> np.ndarray:
    """Voxel spacing as a float array of length ``ndim`` (``None``: 1 mm).

    Raises:
        ValueError: wrong length or non-positive values.
    """
    if spacing is None:
        return np.ones(ndim, dtype=np.float64)
    out = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if out.size != ndim:
        raise ValueError(f"spacing {tuple(out)} has {out.size} values for {ndim}D arrays")
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise ValueError(f"spacing {tuple(out)} must be positive (mm per voxel)")
    return out


def _masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    return pred, ref


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2 |P & R| / (|P| + |R|)`` of two boolean masks; 1.0 if both empty.

    Raises:
        ValueError: shapes differ.
    """
    pred, ref = _masks(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def volume_mm3(mask: np.ndarray, spacing: Spacing = None) -> float:
    """Volume of a boolean mask in mm^3: voxel count times the product of ``spacing``.

    Raises:
        ValueError: ``spacing`` does not match ``mask.ndim`` or is not positive.
    """
    mask = np.asarray(mask, dtype=bool)
    return float(mask.sum()) * float(np.prod(_spacing(spacing, mask.ndim)))


def volume_similarity_from_volumes(pred_volume: float, ref_volume: float) -> float:
    """``1 - |Vp - Vr| / (Vp + Vr)``; 1.0 when both volumes are 0."""
    total = pred_volume + ref_volume
    if total == 0:
        return 1.0
    return 1.0 - abs(pred_volume - ref_volume) / total


def volume_similarity(pred: np.ndarray, ref: np.ndarray) -> float:
    """Volume similarity ``1 - |Vp - Vr| / (Vp + Vr)`` of two boolean masks.

    The spacing cancels out. 1.0 when both are empty, 0.0 when exactly one is.

    Raises:
        ValueError: shapes differ.
    """
    pred, ref = _masks(pred, ref)
    return volume_similarity_from_volumes(float(pred.sum()), float(ref.sum()))


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: voxels with a face neighbour outside the mask.

    Voxels on the image edge are surface voxels (the outside of the image is background).
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty boolean masks.

    The arrays are cropped to the bounding box of ``pred | ref`` (plus one voxel) first;
    this changes no distance and keeps large, mostly empty volumes fast.

    Args:
        pred: boolean mask, any number of dimensions.
        ref: boolean mask of the same shape.
        spacing: voxel size in mm per axis (``None``: 1 mm).

    Returns:
        ``(d_pred_to_ref, d_ref_to_pred)``: for each surface voxel of ``pred`` the distance
        to the nearest surface voxel of ``ref``, and the other way round (1D float arrays).

    Raises:
        ValueError: shapes differ, a mask is empty, or ``spacing`` is invalid.
    """
    from scipy import ndimage

    pred, ref = _masks(pred, ref)
    sampling = _spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        raise ValueError("surface distances need two non-empty masks")
    union = pred | ref
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(hits[0] - 1, 0), hits[-1] + 2))
    pred_surface = surface_voxels(pred[tuple(box)])
    ref_surface = surface_voxels(ref[tuple(box)])
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return to_ref[pred_surface], to_pred[ref_surface]


def _empty_case(pred: np.ndarray, ref: np.ndarray) -> float | None:
    """Distance for the edge cases (0.0 both empty, NaN one empty), None otherwise."""
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if has_pred and has_ref:
        return None
    return 0.0 if not (has_pred or has_ref) else math.nan


def hd95_from_distances(d_pred_to_ref: np.ndarray, d_ref_to_pred: np.ndarray) -> float:
    """HD95 = max of the two directed 95th percentiles (linear interpolation)."""
    return float(max(np.percentile(d_pred_to_ref, 95), np.percentile(d_ref_to_pred, 95)))


def assd_from_distances(d_pred_to_ref: np.ndarray, d_ref_to_pred: np.ndarray) -> float:
    """ASSD = mean of the pooled directed distances of both surfaces."""
    total = float(d_pred_to_ref.sum()) + float(d_ref_to_pred.sum())
    return total / (d_pred_to_ref.size + d_ref_to_pred.size)


def _surface_metric(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Spacing,
    reduce: Callable[[np.ndarray, np.ndarray], float],
) -> float:
    """``reduce`` of both directed surface-distance sets, with the empty-mask conventions."""
    pred, ref = _masks(pred, ref)
    _spacing(spacing, pred.ndim)
    edge = _empty_case(pred, ref)
    if edge is not None:
        return edge
    return reduce(*surface_distances(pred, ref, spacing))


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None) -> float:
    """95th-percentile Hausdorff distance in mm (module docstring: definition, edge cases).

    Raises:
        ValueError: shapes differ or ``spacing`` is invalid.
    """
    return _surface_metric(pred, ref, spacing, hd95_from_distances)


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None) -> float:
    """Average symmetric surface distance in mm (module docstring: definition, edge cases).

    Raises:
        ValueError: shapes differ or ``spacing`` is invalid.
    """
    return _surface_metric(pred, ref, spacing, assd_from_distances)


def mask_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None, surface: bool = True
) -> dict[str, float]:
    """Every metric for one pair of boolean masks.

    Returns:
        ``{"dice", "volume_similarity", "pred_volume_mm3", "ref_volume_mm3"}`` plus
        ``{"hd95_mm", "assd_mm"}`` when ``surface`` is true (the two directed distance sets
        are computed once for both).

    Raises:
        ValueError: shapes differ or ``spacing`` is invalid.
    """
    pred, ref = _masks(pred, ref)
    sampling = _spacing(spacing, pred.ndim)
    voxel = float(np.prod(sampling))
    pred_volume, ref_volume = float(pred.sum()) * voxel, float(ref.sum()) * voxel
    out = {
        "dice": dice(pred, ref),
        "volume_similarity": volume_similarity_from_volumes(pred_volume, ref_volume),
        "pred_volume_mm3": pred_volume,
        "ref_volume_mm3": ref_volume,
    }
    if surface:
        edge = _empty_case(pred, ref)
        if edge is None:
            distances = surface_distances(pred, ref, sampling)
            out["hd95_mm"] = hd95_from_distances(*distances)
            out["assd_mm"] = assd_from_distances(*distances)
        else:
            out["hd95_mm"] = out["assd_mm"] = edge
    return out


def present_labels(*label_maps: np.ndarray) -> list[int]:
    """Sorted non-zero values present in any of ``label_maps``."""
    values: set[int] = set()
    for label_map in label_maps:
        values.update(int(v) for v in np.unique(np.asarray(label_map)) if v != 0)
    return sorted(values)


def label_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Iterable[int] | None = None,
    spacing: Spacing = None,
    surface: bool = True,
) -> dict[int, dict[str, float]]:
    """Per-label metrics of a predicted label map against a reference label map.

    The helper the training loop calls on validation batches, item by item (with
    ``surface=False`` every epoch for speed, ``surface=True`` at the end), and that
    ``hsftrain evaluate`` calls per subject.

    Args:
        pred: integer label map, e.g. ``(X, Y, Z)`` (``argmax`` of the logits). A CPU torch
            tensor works too (read with :func:`numpy.asarray`).
        ref: reference label map of the same shape.
        labels: label values to evaluate; ``None``: every non-zero value present in
            either map. A label absent from both maps gets the "both empty" results.
        spacing: voxel size in mm per axis (``None``: 1 mm, distances then in voxels).
        surface: also compute ``hd95_mm`` and ``assd_mm``.

    Returns:
        ``{label: {metric: value}}`` with the keys of :data:`OVERLAP_METRICS` and, when
        ``surface``, :data:`SURFACE_METRICS`.

    Raises:
        ValueError: shapes differ or ``spacing`` is invalid.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    sampling = _spacing(spacing, pred.ndim)
    values = present_labels(pred, ref) if labels is None else [int(v) for v in labels]
    return {
        value: mask_metrics(pred == value, ref == value, sampling, surface=surface)
        for value in values
    }

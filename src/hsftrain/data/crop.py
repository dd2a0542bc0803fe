"""Cropping a subject to its labels (``datasets.datasets.<name>.crop_margin_mm``).

Some data sets label one hippocampus of a larger image per label map: the ASHS atlas
gives a whole coronal T2 slab with a left and a right label map. Trained as they are, the
unlabelled hippocampus of each pair would be taught as background. Cropping each pair to
the box of its labels, grown by a margin in millimetres (so anisotropic voxels get the
same physical margin along every axis), gives one-hippocampus crops like the ones HSF
segments; nothing is resampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hsftrain.data.nifti import DataError


def label_box(
    label_map: np.ndarray, spacing_mm: Sequence[float], margin_mm: float
) -> tuple[slice, slice, slice]:
    """Index box of the labelled voxels of an ``(X, Y, Z)`` map grown by ``margin_mm`` on
    every side (``ceil(margin / spacing)`` voxels per axis), clipped to the map.

    Raises:
        DataError: no labelled voxel, or a negative margin.
    """
    if margin_mm < 0:
        raise DataError(f"crop_margin_mm={margin_mm}: must be >= 0 (mm around the labels)")
    found = np.argwhere(label_map > 0)
    if not len(found):
        raise DataError("the label map has no labelled voxel to crop around")
    grow = np.ceil(float(margin_mm) / np.asarray(spacing_mm, dtype=np.float64) - 1e-9).astype(int)
    lo = np.maximum(found.min(axis=0) - grow, 0)
    hi = np.minimum(found.max(axis=0) + 1 + grow, label_map.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


def crop_to_labels(
    image: np.ndarray, label_map: np.ndarray, affine: np.ndarray, margin_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image`` and ``label_map`` (both ``(X, Y, Z)``, one grid) cut to :func:`label_box`.

    Returns:
        ``(image, label_map, affine)`` of the crop (the affine shifted to its first voxel).

    Raises:
        DataError: no labelled voxel, or a negative margin.
    """
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    box = label_box(label_map, spacing, margin_mm)
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    return image[box], label_map[box], np.asarray(affine) @ shift

"""Crops at another voxel size than the model's training data: detect, resample, map back.

hsftrain exports store the median voxel size of the training images (canonical RAS axes,
mm) in the ONNX metadata ``spacing_mm``. A crop whose voxel size differs from it by more
than ``tolerance`` (relative, along any axis) is resampled (trilinear) onto a grid of the
same field of view at about the training spacing, segmented there, and the label map is
mapped back onto the crop's own grid (nearest neighbour; the uncertainty trilinearly).
The two grids share their field of view, so the way back lands exactly on the crop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

MODES = ("auto", "warn", "off")


@dataclass(frozen=True)
class Plan:
    """Where a crop is segmented: ``shape`` voxels of ``zooms`` mm (same field of view)."""

    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]


def differs(
    zooms: Sequence[float], spacing: Sequence[float] | None, tolerance: float = 0.25
) -> bool:
    """Whether ``zooms`` differ from ``spacing`` by more than ``tolerance`` (relative) along
    any axis; False when the model's spacing is unknown."""
    if spacing is None:
        return False
    z, s = np.asarray(zooms, float), np.asarray(spacing, float)
    return bool((np.abs(z - s) / s > tolerance).any())


def plan(shape: Sequence[int], zooms: Sequence[float], spacing: Sequence[float]) -> Plan:
    """The grid of the same field of view as ``shape`` x ``zooms`` closest to ``spacing``."""
    fov = np.asarray(shape, float) * np.asarray(zooms, float)
    new_shape = np.maximum(1, np.round(fov / np.asarray(spacing, float))).astype(int)
    return Plan(
        tuple(int(n) for n in new_shape),  # type: ignore[arg-type]
        tuple(float(f) for f in fov / new_shape),  # type: ignore[arg-type]
    )


def resample(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``(X, Y, Z)`` array onto a grid of ``shape`` voxels covering the same field of view
    (voxel centres aligned; ``order`` 0: nearest, 1: trilinear)."""
    scale = np.asarray(array.shape, float) / np.asarray(shape, float)
    return ndimage.affine_transform(
        array,
        scale,
        offset=0.5 * scale - 0.5,
        output_shape=tuple(int(s) for s in shape),
        order=order,
        mode="nearest",
    )


def model_spacing(
    metadata: Sequence[Mapping[str, Any]],
) -> tuple[float, float, float] | None:
    """The ``spacing_mm`` of the first model that has it (a warning when models differ)."""
    found = [tuple(float(v) for v in m["spacing_mm"]) for m in metadata if m.get("spacing_mm")]
    if not found:
        return None
    if len(set(found)) > 1:
        log.warning(
            "the models were trained at different voxel sizes %s: using %s", found, found[0]
        )
    return found[0]  # type: ignore[return-value]

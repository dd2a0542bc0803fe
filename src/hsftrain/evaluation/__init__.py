"""Metrics and reports: compare predicted label maps with reference segmentations.

Import the light metric functions from here; the file-level API lives in
:mod:`hsftrain.evaluation.api` (``hsftrain evaluate``).
"""

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
    volume_mm3,
    volume_similarity,
)

__all__ = [
    "METRICS",
    "OVERLAP_METRICS",
    "SURFACE_METRICS",
    "assd",
    "dice",
    "hd95",
    "label_metrics",
    "mask_metrics",
    "surface_distances",
    "volume_mm3",
    "volume_similarity",
]

"""The data fingerprint: what a set of prepared subjects looks like (shape, spacing,
anisotropy, intensity), logged and saved by ``budget=`` in ``plan.yaml``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hsftrain.data.cache import PreparedSubject


def fingerprint(subjects: Sequence[PreparedSubject]) -> dict[str, Any]:
    """What the data looks like: median shape, spacing (median, min, max per axis), the
    anisotropy (largest / smallest median spacing) and median raw intensity statistics."""
    shapes = np.array([s.shape for s in subjects])
    spacings = np.array([s.spacing for s in subjects])
    intensity: dict[str, list[float]] = {}
    for s in subjects:
        for key, value in s.meta().get("intensity", {}).items():
            intensity.setdefault(key, []).append(float(value))
    median_spacing = np.median(spacings, axis=0)
    return {
        "subjects": len(subjects),
        "median_shape": [int(v) for v in np.median(shapes, axis=0)],
        "min_shape": [int(v) for v in shapes.min(0)],
        "max_shape": [int(v) for v in shapes.max(0)],
        "median_spacing_mm": [round(float(v), 4) for v in median_spacing],
        "min_spacing_mm": [round(float(v), 4) for v in spacings.min(0)],
        "max_spacing_mm": [round(float(v), 4) for v in spacings.max(0)],
        "anisotropy": round(float(median_spacing.max() / median_spacing.min()), 3),
        "intensity": {k: round(float(np.median(v)), 4) for k, v in intensity.items()},
    }

"""Intensity normalisation shared by training preparation and inference (numpy only)."""

from __future__ import annotations

import numpy as np


def z_normalize(image: np.ndarray) -> np.ndarray:
    """``(image - mean) / std`` over all voxels, as float32 (a constant image becomes 0)."""
    image = image.astype(np.float32)
    mean = float(image.mean())
    std = float(image.std())
    return (image - mean) / std if std > 0 else image - mean

"""Pre-processing matching training (z-normalisation, padding to a multiple) and its undoing."""

from __future__ import annotations

import numpy as np

from hsftrain.data.intensity import z_normalize

__all__ = ["pad_to_multiple", "unpad", "z_normalize"]


def pad_to_multiple(
    image: np.ndarray, multiple: int = 8, value: float = 0.0
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad the spatial ``(X, Y, Z)`` axes (the last three) evenly to a multiple of ``multiple``.

    Returns:
        ``(padded, crop)``: ``padded[..., crop[0], crop[1], crop[2]]`` is the input again.
    """
    pads = []
    crop = []
    for size in image.shape[-3:]:
        total = -size % multiple
        before = total // 2
        pads.append((before, total - before))
        crop.append(slice(before, before + size))
    width = [(0, 0)] * (image.ndim - 3) + pads
    return np.pad(image, width, mode="constant", constant_values=value), tuple(crop)


def unpad(array: np.ndarray, crop: tuple[slice, ...]) -> np.ndarray:
    """Undo :func:`pad_to_multiple` on an array whose last three axes are spatial."""
    return array[(..., *crop)]

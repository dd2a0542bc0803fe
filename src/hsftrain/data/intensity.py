"""What every consumer of an image does to it first: z-normalisation and padding the
spatial axes to a multiple (numpy only).

Shared by the training cache (:mod:`hsftrain.data.cache`), int8 calibration
(:mod:`hsftrain.compression.quantize`) and inference (:mod:`hsftrain.inference`), so a
model sees the same intensities and padding everywhere.
"""

from __future__ import annotations

import numpy as np


def z_normalize(image: np.ndarray) -> np.ndarray:
    """``(image - mean) / std`` over all voxels, as float32 (a constant image becomes 0)."""
    image = image.astype(np.float32)
    mean = float(image.mean())
    std = float(image.std())
    return (image - mean) / std if std > 0 else image - mean


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
    return array[(Ellipsis, *crop)]  # type: ignore[arg-type]  # numpy's stubs: no Ellipsis

"""Voxel sizes of a set of images: counted per size, and a warning when they are mixed.

Training does not resample: a network trained on 1 mm and 2 mm images together sees each
at its own size, while an exported model records one training voxel size (the median,
ONNX metadata ``spacing_mm``, what ``hsftrain segment`` resamples to) and every size with
its count (``spacing_mm_counts``, :mod:`hsftrain.export.spacing`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: Relative difference from the median voxel size (along any axis) beyond which a set of
#: images counts as mixed: the default ``resample.tolerance`` of ``hsftrain segment``.
TOLERANCE = 0.25
#: Voxel sizes are counted rounded to 0.01 mm.
DECIMALS = 2
Spacing = tuple[float, float, float]


def size_counts(spacings: Iterable[Sequence[float]]) -> list[tuple[Spacing, int]]:
    """Each voxel size (mm, rounded to 0.01) with its number of images, most frequent first.

    Example:
        >>> size_counts([(1, 1, 1), (2, 2, 2), (1, 1, 1.001)])
        [((1.0, 1.0, 1.0), 2), ((2.0, 2.0, 2.0), 1)]
    """
    counter: Counter[Spacing] = Counter()
    for s in spacings:
        x, y, z = (round(float(v), DECIMALS) for v in s)
        counter[(x, y, z)] += 1
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def median_size(spacings: Sequence[Sequence[float]]) -> Spacing:
    """Per-axis median voxel size (mm, rounded to 1e-4)."""
    median = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    return tuple(round(float(v), 4) for v in median)  # type: ignore[return-value]


def fmt(spacing: Sequence[float]) -> str:
    """``1x1x1.2`` for ``(1.0, 1.0, 1.2)``."""
    return "x".join(f"{float(v):g}" for v in spacing)


def is_mixed(spacings: Sequence[Sequence[float]], tolerance: float = TOLERANCE) -> bool:
    """Whether some image's voxel size differs from the median by more than ``tolerance``
    (relative) along an axis."""
    if len(spacings) < 2:
        return False
    array = np.asarray(spacings, dtype=np.float64)
    median = np.median(array, axis=0)
    return bool((np.abs(array - median) > tolerance * median).any())


def describe(counts: Sequence[tuple[Spacing, int]], limit: int = 5) -> str:
    """``12 images at 1x1x1 mm, 3 at 2x2x2 mm`` (the ``limit`` most frequent sizes)."""
    parts = [
        f"{n} {('image' if n == 1 else 'images') + ' ' if i == 0 else ''}at {fmt(s)} mm"
        for i, (s, n) in enumerate(counts[:limit])
    ]
    if len(counts) > limit:
        rest = sum(n for _, n in counts[limit:])
        parts.append(f"{rest} at {len(counts) - limit} other sizes")
    return ", ".join(parts)


def mixed_warning(spacings: Sequence[Sequence[float]], what: str) -> str | None:
    """The warning for ``what`` (e.g. ``the training images``) with mixed voxel sizes, or
    None when they agree within :data:`TOLERANCE`."""
    if not is_mixed(spacings):
        return None
    return (
        f"{what} have mixed voxel sizes: {describe(size_counts(spacings))}. Training does "
        "not resample, so the network learns each at its own size, and a model trained on "
        f"them records the median {fmt(median_size(spacings))} mm as its voxel size "
        "(spacing_mm, what `hsftrain segment` resamples to; every size is listed in "
        "spacing_mm_counts): resample the images to one voxel size before training, or "
        "train one model per voxel size"
    )


def warn_if_mixed(spacings: Sequence[Sequence[float]], what: str) -> None:
    """Log :func:`mixed_warning` when the voxel sizes are mixed."""
    message = mixed_warning(spacings, what)
    if message:
        log.warning("%s", message)

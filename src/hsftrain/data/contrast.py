"""The contrast index of an MRI crop: which tissue is bright, measured without labels.

In a T1-weighted hippocampus crop the darkest voxels are cerebrospinal fluid in thin
spaces (temporal horn, cisterns, sulci): they lie on edges, where the gradient is steep;
the brightest are white matter, flat inside. A T2-weighted crop is the other way round
(bright fluid on edges, dark flat white matter). The *contrast index* is

    log( median |gradient| of the brightest 20 % / median |gradient| of the darkest 20 % )

(gradients in intensity per mm): negative for T1, positive for T2. It needs no
segmentation, so a wrong contrast is seen even when the model's labels are nonsense, and it
is unchanged by the intensity scale and offset and by the voxel size. Measured on real
crops: the 208 MSD T1 crops -0.58 +- 0.14 (highest +0.03), T1 crops of three other heads
-1.6 to -0.6, the 24 ASHS TSE (T2) hippocampus crops +0.9 +- 0.1 (lowest +0.59 on 60 x 80 x
70 mm crops), the ICBM 2009c T2 template +1.6 (docs/segmentation.md, "Input checks").

Written into exported models (:mod:`hsftrain.export.contract`) and compared with each crop
by ``hsftrain segment`` (:mod:`hsftrain.inference.contract`). Numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Share of the crop's voxels in each tail (darkest, brightest).
TAIL = 0.2
#: Fewest voxels a crop needs for an index (fewer: None).
MIN_VOXELS = 512


def contrast_index(image: np.ndarray, zooms: Sequence[float]) -> float | None:
    """The contrast index of an ``(X, Y, Z)`` crop (raw intensities, ``zooms`` in mm).

    A background of one value (the zeros of a skull-stripped image or of padding: at
    least 1 % of the voxels at the minimum) and the voxels next to it are left out, so
    that a flat background does not count as dark tissue.

    Returns:
        The index (T1 < 0 < T2), or None when it cannot be measured (a crop with fewer than
        :data:`MIN_VOXELS` voxels of tissue, or a constant one).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> t1 = rng.normal(100, 2, (24, 24, 24))
        >>> t1[::6] = 20  # thin dark sheets (fluid) in bright tissue
        >>> contrast_index(t1, (1, 1, 1)) < 0 < contrast_index(-t1, (1, 1, 1))
        True
    """
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3 or min(array.shape) < 2:
        return None
    keep = np.isfinite(array)
    low = float(array[keep].min()) if keep.any() else 0.0
    background = array == low
    if background.mean() >= 0.01:
        from scipy import ndimage

        keep &= ~ndimage.binary_dilation(background)
    if int(keep.sum()) < MIN_VOXELS:
        return None
    steps = [float(z) for z in zooms]
    grad = np.zeros(array.shape, dtype=np.float32)
    for axis in range(3):
        grad += (np.gradient(array, axis=axis).astype(np.float32) / steps[axis]) ** 2
    grad = np.sqrt(grad)
    values, slopes = array[keep], grad[keep]
    dark_limit, bright_limit = np.quantile(values, [TAIL, 1.0 - TAIL])
    if not bright_limit > dark_limit:
        return None
    dark = float(np.median(slopes[values <= dark_limit]))
    bright = float(np.median(slopes[values >= bright_limit]))
    if not (dark > 0 and bright > 0):
        return None
    return round(float(np.log(bright / dark)), 4)


def contrast_name(index: float) -> str:
    """``"T1"`` for a negative index, ``"T2"`` otherwise (see the module docstring)."""
    return "T1" if index < 0 else "T2"

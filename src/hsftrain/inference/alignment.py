"""Two images of one subject: rigid registration, and arrays mapped between their grids.

Grids are ``(X, Y, Z)`` arrays with a voxel -> RAS mm affine (canonical orientation, as
:class:`hsftrain.inference.image.Volume` holds them); transforms are 4x4 RAS mm matrices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from hsftrain.inference.image import InputError, Volume
from hsftrain.inference.roiloc import Box, rigid_registration

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Threads of a registration: fixed, because ITK sums per-thread partial results; the
#: images are small (block-averaged).
REGISTRATION_THREADS = 1
#: Decimals a registration is rounded to (RAS mm and rotation entries): ITK's result still
#: varies in its last bits (1e-16 run to run, 1e-13 with other thread settings), which would
#: change interpolated outputs by as much and make them depend on the process and
#: ``hardware.jobs``; 1e-6 mm is far below any voxel.
DECIMALS = 6


class NoOverlapError(InputError):
    """Two images of one subject that do not overlap: nothing to register."""


def overlaps(a: Volume, b: Volume) -> bool:
    """Whether the fields of view of ``a`` and ``b`` (scanner coordinates) share a point."""
    corners_a = box_corners(a.affine, a.array.shape)
    corners_b = box_corners(b.affine, b.array.shape)
    lo = np.maximum(corners_a.min(axis=0), corners_b.min(axis=0))
    hi = np.minimum(corners_a.max(axis=0), corners_b.max(axis=0))
    return bool((hi > lo).all())


def register_rigid(
    fixed: Volume,
    moving: Volume,
    registration_mm: float = 2.0,
    iterations: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Rigid registration of ``moving`` to ``fixed``, started from their scanner coordinates.

    Returns:
        ``(matrix, quality)``: the 4x4 transform mapping ``fixed`` points to ``moving``
        points (RAS mm), and minus the final Mattes mutual information (higher is better).

    Raises:
        NoOverlapError: the images do not overlap in scanner coordinates, or too little for
            the metric to start.
    """
    import SimpleITK as sitk

    what = f"{fixed.path.name} and {moving.path.name} do not overlap in scanner coordinates"
    if not overlaps(fixed, moving):
        raise NoOverlapError(what)

    from hsftrain.inference.roiloc import _block_mean, _to_sitk

    fixed_image = _to_sitk(*_block_mean(fixed.array, fixed.affine, registration_mm))
    moving_image = _to_sitk(*_block_mean(moving.array, moving.affine, registration_mm))
    centre = fixed_image.TransformContinuousIndexToPhysicalPoint(
        [(s - 1) / 2 for s in fixed_image.GetSize()]
    )
    start = sitk.Euler3DTransform()
    start.SetCenter(centre)
    reg = rigid_registration(0.5, seed, iterations)
    reg.SetNumberOfThreads(REGISTRATION_THREADS)
    reg.SetInitialTransform(start, inPlace=False)
    try:
        result = reg.Execute(fixed_image, moving_image)
    except RuntimeError as err:
        if "overlap" not in str(err):
            raise
        raise NoOverlapError(f"{what} enough to be registered") from err
    inner = result.GetNthTransform(0) if isinstance(result, sitk.CompositeTransform) else result
    euler = sitk.Euler3DTransform(inner)
    rotation = np.asarray(euler.GetMatrix(), dtype=np.float64).reshape(3, 3)
    centre_lps = np.asarray(euler.GetCenter(), dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = rotation
    lps[:3, 3] = np.asarray(euler.GetTranslation()) + centre_lps - rotation @ centre_lps
    metric = float(reg.GetMetricValue())
    quality = -metric if np.isfinite(metric) else 0.0
    return np.round(_LPS @ lps @ _LPS, DECIMALS) + 0.0, quality  # + 0.0: no -0.0


def covering_box(side: str, corners_ras: np.ndarray, volume: Volume) -> Box | None:
    """Voxel box of ``volume`` covering the points ``corners_ras`` (N, 3) grown by one
    voxel, clipped to the image; None when it is (nearly) outside it."""
    inv = np.linalg.inv(volume.affine)
    vox = corners_ras @ inv[:3, :3].T + inv[:3, 3]
    shape = np.asarray(volume.array.shape)
    lo = np.clip(np.floor(vox.min(axis=0)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(vox.max(axis=0)).astype(int) + 2, 0, shape)
    if (hi - lo < 2).any():
        return None
    return Box(side, tuple(int(v) for v in lo), tuple(int(v) for v in hi))  # type: ignore[arg-type]


def box_corners(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The 8 outer corners ``(8, 3)`` (RAS mm) of a grid of voxels (their outer faces)."""
    ranges = [(-0.5, s - 0.5) for s in shape]
    idx = np.array([[a, b, c] for a in ranges[0] for b in ranges[1] for c in ranges[2]])
    return idx @ affine[:3, :3].T + affine[:3, 3]


def grid_affine(affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """Affine of the grid :func:`hsftrain.inference.resample.resample` maps a ``shape``
    array to (same field of view, ``new_shape`` voxels)."""
    scale = np.asarray(shape, float) / np.asarray(new_shape, float)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = 0.5 * scale - 0.5
    return affine @ step


def map_onto(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_to_src: np.ndarray,
    order: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``array`` (``(X, Y, Z)`` or ``(C, X, Y, Z)``) onto another grid.

    Args:
        src_affine, dst_affine: voxel -> RAS mm of each grid.
        dst_to_src: RAS mm transform from the destination's space to the source's.

    Returns:
        ``(mapped, covered)``: the resampled array (0 outside the source) and the
        ``(X, Y, Z)`` bool mask of destination voxels inside the source grid.
    """
    matrix = np.linalg.inv(src_affine) @ dst_to_src @ dst_affine
    dst_shape = tuple(int(s) for s in dst_shape)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in dst_shape], indexing="ij")
    covered = np.ones(dst_shape, dtype=bool)
    src_shape = array.shape[-3:]
    for axis in range(3):
        coord = sum(matrix[axis, k] * grids[k] for k in range(3)) + matrix[axis, 3]
        covered &= (coord >= -0.5) & (coord <= src_shape[axis] - 0.5)

    def one(channel: np.ndarray) -> np.ndarray:
        return ndimage.affine_transform(
            channel,
            matrix[:3, :3],
            offset=matrix[:3, 3],
            output_shape=dst_shape,
            order=order,
            mode="nearest",
        )

    mapped = np.stack([one(c) for c in array]) if array.ndim == 4 else one(array)
    mapped = np.where(covered, mapped, 0).astype(array.dtype, copy=False)
    return mapped, covered

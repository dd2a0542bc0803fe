"""Test-time augmentation (TTA) on canonical RAS arrays, and its inverse on predictions.

An :class:`Augmentation` is drawn from the ``augmentation`` config group (the same
:class:`~hsftrain.data.augmentation_spec.AugmentationSpec` training reads, defaults included) and applied to the z-normalised, padded input; the model's probabilities
are then mapped back onto the original grid with :meth:`Augmentation.invert`:

* **flip** (``flip.axes``, each with probability ``flip.p``): inverted exactly.
* **affine** (probability ``affine.p``; ``scales``, ``degrees``, ``translation`` in mm, about
  the volume centre, as torchio's RandomAffine): the image is resampled trilinearly; the
  probabilities are resampled back with the inverse matrix (trilinear, so each voxel's
  probabilities still sum to 1). Exact up to interpolation.
* **elastic** (probability ``elastic.p``; ``num_control_points`` per axis, displacements up
  to ``max_displacement`` mm on the inner control points, border points fixed, as torchio's
  RandomElasticDeformation; scaled down where it would fold the image, i.e. where its
  gradient exceeds 0.5): a cubic B-spline-smoothed displacement field pulls the image;
  the inverse field is approximated by fixed-point iteration ``v(x) = -u(x + v(x))``
  (accurate to a small fraction of a voxel for the smooth fields used here).

The inversions are linear in the probabilities, so each view computes its trilinear
weights once (:func:`pull_operator`, a sparse matrix) and applies them to every class of
every model of an ensemble in one product (:meth:`Augmentation.invert` takes any leading
axes), instead of one resampling per class and model.

A draw with no transform at all is drawn again (up to 20 times), so that every augmented
prediction differs from the plain one; all randomness comes from the ``rng`` passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, sparse

from hsftrain.data.augmentation_spec import AugmentationSpec, flip_dims


@dataclass(frozen=True)
class Augmentation:
    """One test-time augmentation of a ``(X, Y, Z)`` canonical array.

    Attributes:
        flip_axes: spatial axes flipped (applied first).
        matrix: 4x4 voxel matrix mapping output voxels to input voxels (pull), or None.
        displacement: ``(3, X, Y, Z)`` voxel displacement pulling the image, or None.
    """

    flip_axes: tuple[int, ...] = ()
    matrix: np.ndarray | None = None
    displacement: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_identity(self) -> bool:
        return not self.flip_axes and self.matrix is None and self.displacement is None

    def describe(self) -> str:
        parts = [f"flip{list(self.flip_axes)}"] if self.flip_axes else []
        parts += ["affine"] if self.matrix is not None else []
        parts += ["elastic"] if self.displacement is not None else []
        return "+".join(parts) or "none"

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Augment a ``(X, Y, Z)`` image: flip, then affine, then elastic."""
        out = np.flip(image, self.flip_axes) if self.flip_axes else image
        if self.matrix is not None:
            out = _affine(out, self.matrix)
        if self.displacement is not None:
            out = _warp(out, self.displacement)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _inverse_operators(self, shape: tuple[int, ...]) -> list[sparse.csr_array]:
        """The pulls that undo the elastic, then the affine part, on a ``shape`` grid (not
        kept: each is about 100 bytes per voxel, and a view is mapped back once, all models
        at a time)."""
        grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
        operators = []
        if self.displacement is not None:
            coords = grid + invert_displacement(self.displacement).reshape(3, -1)
            operators.append(pull_operator(coords, shape))
        if self.matrix is not None:
            inverse = np.linalg.inv(self.matrix)
            coords = inverse[:3, :3] @ grid.astype(np.float64) + inverse[:3, 3:]
            operators.append(pull_operator(coords, shape))
        return operators

    def invert(self, probs: np.ndarray) -> np.ndarray:
        """Map ``(..., X, Y, Z)`` probabilities predicted on the augmented image back
        (leading axes: classes, or models x classes, all resampled at once)."""
        shape = tuple(probs.shape[-3:])
        out = probs
        operators = self._inverse_operators(shape)
        if operators:
            flat = np.ascontiguousarray(probs, dtype=np.float32).reshape(-1, int(np.prod(shape)))
            columns = flat.T  # (voxels, arrays): one sparse product resamples every array
            for operator in operators:
                columns = operator @ columns
            out = np.asarray(columns).T.reshape(probs.shape)
        if self.flip_axes:
            out = np.flip(out, tuple(a - 3 for a in self.flip_axes))
        return np.ascontiguousarray(out, dtype=np.float32)


def pull_operator(coords: np.ndarray, shape: Sequence[int]) -> sparse.csr_array:
    """Trilinear pull resampling as a sparse ``(points, voxels)`` matrix: row ``i`` holds the
    eight weights that interpolate a ``shape`` array at ``coords[:, i]`` (voxel
    coordinates, ``(3, points)``); coordinates outside the grid take the edge value, as
    ``scipy.ndimage.map_coordinates(..., order=1, mode="nearest")``.

    Example:
        >>> op = pull_operator(np.array([[0.5], [0.0], [0.0]]), (2, 1, 1))
        >>> (op @ np.array([0.0, 1.0], dtype=np.float32)).tolist()
        [0.5]
    """
    corners: list[tuple[np.ndarray, np.ndarray]] = []  # per axis: (low, high) index
    weights: list[tuple[np.ndarray, np.ndarray]] = []
    for axis, n in enumerate(shape):
        c = np.clip(coords[axis].astype(np.float64), 0, n - 1)
        low = np.minimum(np.floor(c).astype(np.int64), max(n - 2, 0))
        frac = c - low if n > 1 else np.zeros_like(c)
        corners.append((low, np.minimum(low + 1, n - 1)))
        weights.append((1 - frac, frac))
    columns, values = [], []
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                flat = (corners[0][a] * shape[1] + corners[1][b]) * shape[2] + corners[2][c]
                columns.append(flat)
                values.append(weights[0][a] * weights[1][b] * weights[2][c])
    points = coords.shape[1]
    return sparse.csr_array(
        (
            np.stack(values, 1).ravel().astype(np.float32),
            np.stack(columns, 1).ravel(),
            np.arange(0, 8 * points + 1, 8),
        ),
        shape=(points, int(np.prod(shape))),
    )


def _affine(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return ndimage.affine_transform(
        image, matrix[:3, :3], offset=matrix[:3, 3], order=1, mode="nearest"
    )


def _warp(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    grid = np.indices(image.shape, dtype=np.float32)
    return ndimage.map_coordinates(image, grid + displacement, order=1, mode="nearest")


def invert_displacement(displacement: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Approximate inverse of a smooth pull displacement field ``(3, X, Y, Z)``.

    Solves ``v(x) = -u(x + v(x))`` by fixed-point iteration, so that warping by ``u`` then
    by ``v`` is close to the identity.
    """
    grid = np.indices(displacement.shape[1:], dtype=np.float32)
    inverse = -displacement.copy()
    for _ in range(iterations):
        coords = grid + inverse
        inverse = -np.stack(
            [ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in displacement]
        )
    return inverse.astype(np.float32)


def _pair(value: Any, centre: float) -> tuple[float, float]:
    """torchio-style range: a scalar ``v`` means ``(centre - v, centre + v)``."""
    if isinstance(value, int | float):
        return centre - float(value), centre + float(value)
    lo, hi = (float(v) for v in value)
    return lo, hi


def affine_matrix(
    shape: Sequence[int],
    zooms: Sequence[float],
    scales: Sequence[float] = (1.0, 1.0, 1.0),
    degrees: Sequence[float] = (0.0, 0.0, 0.0),
    translation_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """4x4 voxel matrix (output voxel -> input voxel) of a scaling, rotation and translation
    in mm about the volume centre."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    linear_mm = rz @ ry @ rx @ np.diag(scales)
    z = np.asarray(zooms, dtype=np.float64)
    linear = np.diag(1 / z) @ linear_mm @ np.diag(z)
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + np.asarray(translation_mm) / z
    return matrix


#: Largest displacement gradient allowed in an elastic field (keeps it invertible).
MAX_GRADIENT = 0.5


def elastic_displacement(
    shape: Sequence[int],
    zooms: Sequence[float],
    rng: np.random.Generator,
    num_control_points: int | Sequence[int] = 7,
    max_displacement: float | Sequence[float] = 3.0,
    locked_borders: int = 2,
) -> np.ndarray:
    """Random smooth displacement field ``(3, X, Y, Z)`` in voxels (torchio-like).

    A field steeper than :data:`MAX_GRADIENT` (voxel per voxel) is scaled down so that it
    does not fold the image and its inverse exists.
    """
    points = np.broadcast_to(np.asarray(num_control_points, dtype=int), (3,))
    points = np.maximum(points, 4)
    max_mm = np.broadcast_to(np.asarray(max_displacement, dtype=np.float64), (3,))
    field_ = np.empty((3, *shape), dtype=np.float32)
    coarse_all = rng.uniform(-1, 1, size=(3, *points)) * max_mm[:, None, None, None]
    if locked_borders:
        b = min(int(locked_borders), 1)  # lock the outermost control points
        mask = np.zeros(tuple(points), dtype=bool)
        mask[b:-b, b:-b, b:-b] = True
        coarse_all *= mask
    coords = np.meshgrid(
        *[np.linspace(0, p - 1, s, dtype=np.float32) for p, s in zip(points, shape, strict=True)],
        indexing="ij",
    )
    for axis in range(3):
        coarse = ndimage.spline_filter(coarse_all[axis], order=3, mode="nearest")
        field_[axis] = ndimage.map_coordinates(
            coarse, coords, order=3, mode="nearest", prefilter=False
        ) / float(zooms[axis])
    steepest = max(float(np.abs(np.gradient(c)).max()) for c in field_)  # voxel per voxel
    if steepest > MAX_GRADIENT:  # would fold (or nearly): scale down, keep it invertible
        field_ *= MAX_GRADIENT / steepest
    return field_


def sample_augmentation(
    aug_cfg: Mapping[str, Any] | AugmentationSpec,
    shape: Sequence[int],
    zooms: Sequence[float],
    rng: np.random.Generator,
    max_draws: int = 20,
) -> Augmentation:
    """Draw one augmentation from the ``augmentation`` config (flip, affine, elastic).

    Raises:
        ConfigError: an invalid ``augmentation`` key (names it).
    """
    spec = AugmentationSpec.from_config(aug_cfg)
    flip, affine, elastic = spec["flip"], spec["affine"], spec["elastic"]
    if not (flip.on or affine.on or elastic.on):
        return Augmentation()
    axes = flip_dims(flip["axes"])
    augmentation = Augmentation()
    for _ in range(max_draws):
        flip_axes = tuple(sorted({a for a in axes if rng.random() < flip.p}))
        matrix = None
        if rng.random() < affine.p:
            scales = rng.uniform(*_pair(affine["scales"], 1.0), size=3)
            degrees = rng.uniform(*_pair(affine["degrees"], 0.0), size=3)
            translation = rng.uniform(*_pair(affine["translation"], 0.0), size=3)
            matrix = affine_matrix(
                shape, zooms, scales.tolist(), degrees.tolist(), translation.tolist()
            )
        displacement = None
        if rng.random() < elastic.p:
            displacement = elastic_displacement(
                shape,
                zooms,
                rng,
                num_control_points=elastic["num_control_points"],
                max_displacement=elastic["max_displacement"],
                locked_borders=int(elastic["locked_borders"]),
            )
        augmentation = Augmentation(flip_axes, matrix, displacement)
        if not augmentation.is_identity:
            break
    return augmentation


def sample_augmentations(
    aug_cfg: Mapping[str, Any] | AugmentationSpec,
    n: int,
    shape: Sequence[int],
    zooms: Sequence[float],
    rng: np.random.Generator,
) -> list[Augmentation]:
    """The plain (identity) view followed by ``n`` random augmentations."""
    spec = AugmentationSpec.from_config(aug_cfg)
    return [Augmentation()] + [sample_augmentation(spec, shape, zooms, rng) for _ in range(n)]

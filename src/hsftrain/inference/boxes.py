"""Crop boxes of a whole head: index boxes of the canonical voxel grid, from mapped template
corners (:func:`box_from_points`) or sized to a model's training field of view
(:func:`fov_box`, :func:`crop_extent`).

A model trained on tight crops (MSD: about 35 x 50 x 36 mm) has never seen what lies
further from the hippocampus; given a larger crop it labels neighbouring structures
(the amygdala) too. An exported model records the extent of its training crops in its
ONNX metadata (``field_of_view_mm``, canonical RAS axes, mm); with ``roiloc.model_fov``
on, each whole-head crop for it is that size (plus ``roiloc.model_fov_margin_mm`` on
every side), centred on the located hippocampus. Models without the key, and models
trained on whole heads (a field of view not below ``roiloc.crop_max_fov_mm``), keep the
template box (``roiloc.box_mm`` + ``roiloc.margin_mm``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from hsftrain.config.compose import ConfigError
from hsftrain.core.onnx_metadata import FIELD_OF_VIEW_KEY as FOV_KEY
from hsftrain.inference.image import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Box:
    """A crop of the canonical voxel grid: ``array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]``."""

    side: str
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.lo, self.hi, strict=True))  # type: ignore[return-value]

    def affine(self, affine: np.ndarray) -> np.ndarray:
        """Affine of the cropped array, given the full array's affine."""
        shift = np.eye(4)
        shift[:3, 3] = self.lo
        return affine @ shift


def template_box_corners(center_mm: Sequence[float], box_mm: Sequence[float]) -> np.ndarray:
    """The 8 corners ``(8, 3)`` (RAS mm) of a box of size ``box_mm`` centred on ``center_mm``."""
    c = np.asarray(center_mm, dtype=np.float64)
    half = np.asarray(box_mm, dtype=np.float64) / 2
    return np.array([c + half * np.array(s) for s in product((-1, 1), repeat=3)])


def _inside(side: str, lo: np.ndarray, hi: np.ndarray, volume: Volume) -> Box:
    """``lo:hi`` clipped to the image (a warning when clipped).

    Raises:
        ValueError: the box lies entirely outside the image.
    """
    shape = np.asarray(volume.array.shape)
    lo_c, hi_c = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    if (hi_c - lo_c <= 0).any():
        raise ValueError(
            f"{volume.path}: the {side} hippocampus box {lo.tolist()}-{hi.tolist()} lies outside "
            f"the image {shape.tolist()}: check the registration (roiloc.*) or use roiloc.mode=crop"
        )
    if (lo_c != lo).any() or (hi_c != hi).any():
        log.warning(
            "%s: the %s hippocampus box is clipped by the image border", volume.path.name, side
        )
    return Box(side, tuple(int(v) for v in lo_c), tuple(int(v) for v in hi_c))  # type: ignore[arg-type]


def box_from_points(
    side: str,
    points_ras: np.ndarray,
    volume: Volume,
    margin_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> Box:
    """Voxel box of ``volume`` covering ``points_ras`` (N, 3), grown by ``margin_mm``.

    Raises:
        ValueError: the box lies entirely outside the image.
    """
    inv = np.linalg.inv(volume.affine)
    vox = (inv[:3, :3] @ points_ras.T).T + inv[:3, 3]
    margin = np.asarray(margin_mm, dtype=np.float64) / volume.zooms
    lo = np.floor(vox.min(axis=0) - margin).astype(int)
    hi = np.ceil(vox.max(axis=0) + margin).astype(int) + 1
    return _inside(side, lo, hi, volume)


def fov_box(
    side: str,
    center_ras: Sequence[float] | np.ndarray,
    volume: Volume,
    extent_mm: Sequence[float] | np.ndarray,
) -> Box:
    """Voxel box of ``volume`` of ``extent_mm`` (along the canonical axes, rounded to whole
    voxels) centred on the point ``center_ras`` (RAS mm). A box reaching past the image
    border is moved inside when the image is large enough (a warning), else clipped.
    On a 1 mm image, ``extent_mm=(35, 50, 36)`` gives a box of shape ``(35, 50, 36)``.

    Raises:
        ValueError: the box lies entirely outside the image.
    """
    inv = np.linalg.inv(volume.affine)
    center = inv[:3, :3] @ np.asarray(center_ras, dtype=np.float64) + inv[:3, 3]
    size = np.maximum(np.round(np.asarray(extent_mm, dtype=np.float64) / volume.zooms), 1)
    lo = np.round(center - (size - 1) / 2).astype(int)
    hi = lo + size.astype(int)
    shape = np.asarray(volume.array.shape)
    if (hi > 0).all() and (lo < shape).all() and (size <= shape).all():
        moved = np.clip(lo, 0, shape - size.astype(int))
        if (moved != lo).any():
            log.warning(
                "%s: the %s hippocampus box is moved inside the image border",
                volume.path.name,
                side,
            )
        lo, hi = moved, moved + size.astype(int)
    return _inside(side, lo, hi, volume)


def model_field_of_view(engines: Sequence[Any]) -> tuple[float, float, float] | None:
    """The training field of view (mm) of the models of a run: the largest along each axis
    (a warning when they differ); None when a model does not record one (every crop then
    gets the template box).

    Raises:
        ConfigError: a model's ``field_of_view_mm`` is not three positive numbers.
    """
    found = []
    for engine in engines:
        value = (getattr(engine, "metadata", None) or {}).get(FOV_KEY)
        if value is None:
            return None
        try:
            fov = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            fov = ()
        if len(fov) != 3 or not all(np.isfinite(v) and v > 0 for v in fov):
            name = getattr(getattr(engine, "path", None), "name", "a model")
            raise ConfigError(
                f"{name}: metadata {FOV_KEY}={value!r} is not three positive sizes in mm; "
                "re-export the model, or set roiloc.model_fov=false"
            )
        found.append(fov)
    if not found:
        return None
    if len(set(found)) > 1:
        log.warning(
            "the models were trained on crops of different sizes %s mm: whole-head crops "
            "take the largest along each axis",
            found,
        )
    x, y, z = (float(v) for v in np.max(found, axis=0))
    return x, y, z


def _mm3(cfg: Mapping[str, Any], key: str, default: float, minimum: float | None) -> np.ndarray:
    """``roiloc.<key>``: 3 sizes in mm (one number: the same on every axis), checked."""
    raw = cfg.get(key, (default,) * 3)
    raw = [raw] * 3 if isinstance(raw, int | float) and not isinstance(raw, bool) else raw
    try:
        value = np.asarray([float(v) for v in raw], dtype=np.float64)
    except (TypeError, ValueError):
        value = np.array([np.nan])
    if (
        value.shape != (3,)
        or not np.isfinite(value).all()
        or (minimum is not None and (value < minimum).any())
    ):
        least = "" if minimum is None else f" >= {minimum:g}"
        raise ConfigError(f"roiloc.{key}={raw!r}: give 3 numbers{least} in mm, e.g. [2, 2, 2]")
    return value


@dataclass(frozen=True)
class FovSettings:
    """The ``roiloc.model_fov*`` keys (see ``conf/roiloc/default.yaml``).

    Attributes:
        use: size whole-head crops to the model's training field of view.
        margin_mm: grown on every side of such a crop (image mm).
        shift_mm: added to the box centre (template mm) for such a crop.
    """

    use: bool
    margin_mm: np.ndarray
    shift_mm: np.ndarray

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FovSettings:
        """Read and check the keys.

        Raises:
            ConfigError: ``model_fov`` not true/false, the margin not 3 sizes >= 0, or the
                shift not 3 numbers (mm).
        """
        use = cfg.get("model_fov", True)
        if not isinstance(use, bool):
            raise ConfigError(
                f"roiloc.model_fov={use!r}: use true (crops sized to the model's training "
                "field of view) or false (roiloc.box_mm + roiloc.margin_mm for every model)"
            )
        return cls(
            use,
            _mm3(cfg, "model_fov_margin_mm", 0.0, 0.0),
            _mm3(cfg, "model_fov_shift_mm", 0.0, None),
        )


def crop_extent(
    cfg: Mapping[str, Any], field_of_view_mm: Sequence[float] | None
) -> np.ndarray | None:
    """Extent (mm) of the whole-head crops for models trained on ``field_of_view_mm``: that
    plus ``model_fov_margin_mm`` on every side, when ``roiloc.model_fov`` is on and the field
    of view is a crop's (below ``roiloc.crop_max_fov_mm`` along every axis); None: the
    template box.

    Raises:
        ConfigError: see :meth:`FovSettings.from_config`.
    """
    fov_cfg = FovSettings.from_config(cfg)
    if not fov_cfg.use or field_of_view_mm is None:
        return None
    fov = np.asarray(field_of_view_mm, dtype=np.float64)
    if (fov >= float(cfg.get("crop_max_fov_mm", 80))).any():  # trained on whole heads
        return None
    extent: np.ndarray = fov + 2 * fov_cfg.margin_mm
    return extent

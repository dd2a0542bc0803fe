"""Locating the hippocampi in a whole-head MRI (the ``roiloc`` config group).

A brain template in MNI space (by default the MNI152 2009a symmetric T1 shipped with
hsftrain, ``hsftrain/assets/mni``, with its licence in the folder's README) is registered
to the subject with SimpleITK: a rigid then affine transform, Mattes mutual information,
at low resolution (``registration_mm``, 4 mm by default), so that it takes a few seconds.
The metric is restricted to the template's brain (it is skull-stripped), which keeps it
usable on images with or without skull.

Each side's box is defined in template space by a centre (``centers_mm``, MNI mm, with an
optional ``offsets_mm``) and a size (``box_mm``). Its eight corners are mapped into the
subject, and the box of the subject voxels they cover, grown by ``margin_mm`` on every side
and clipped to the image, is the crop. For a model that records the field of view of its
training crops (``roiloc.model_fov``, :mod:`hsftrain.inference.boxes`), the crop is instead
that size, centred on the mapped centre. Crops are plain index boxes of the subject's own
(canonical) voxel grid: nothing is resampled, so results paste back exactly.

Whether an input is already a crop (``mode: auto``): an image whose field of view is below
``crop_max_fov_mm`` (80 mm by default) along every axis is a hippocampus crop; anything
larger is a whole head.

Registration quality (:func:`localize`): the final mutual information (as a positive
number, higher is better) must reach ``min_quality`` and the affine may scale the template
by at most ``max_scale`` (or ``1 / max_scale``) along any axis; otherwise the subject is
flagged (the reason goes into ``volumes.csv``). Measured with the defaults: real heads
0.19 (4 mm, heavily downsampled) to 0.84, scales 0.68 to 1.15; pure noise 0.01, an
intensity ramp scaled 2.4 times.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.config.compose import ConfigError
from hsftrain.inference.boxes import Box as Box  # re-exported: callers import it from here
from hsftrain.inference.boxes import FovSettings, crop_extent, fov_box
from hsftrain.inference.boxes import box_from_points as box_from_points
from hsftrain.inference.boxes import template_box_corners as template_box_corners
from hsftrain.inference.image import Volume

log = logging.getLogger(__name__)

#: The MNI152 2009a symmetric T1 (skull-stripped, 1 mm) shipped with hsftrain.
MNI_TEMPLATE = (
    Path(__file__).resolve().parents[1]
    / "assets"
    / "mni"
    / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
)
MODES: tuple[str, ...] = ("auto", "crop", "wholehead")
SIDES: tuple[str, ...] = ("left", "right")
_LPS = np.diag([-1.0, -1.0, 1.0])


def is_crop(volume: Volume, mode: str = "auto", max_fov_mm: float = 80.0) -> bool:
    """Whether ``volume`` is segmented as it is (a crop) rather than located first.

    Raises:
        ConfigError: unknown ``roiloc.mode``.
    """
    if mode not in MODES:
        raise ConfigError(f"roiloc.mode={mode!r}: use one of {', '.join(MODES)}")
    if mode != "auto":
        return mode == "crop"
    return bool((volume.fov_mm < float(max_fov_mm)).all())


def template_path(template: str | None = None) -> Path:
    """The registration template: ``template`` if given, else the packaged MNI152 2009a T1
    (:data:`MNI_TEMPLATE`).

    Raises:
        ConfigError: the file cannot be found.
    """
    path = Path(template).expanduser() if template else MNI_TEMPLATE
    if not path.is_file():
        key = "roiloc.template" if template else "roiloc.template (default: the packaged MNI152)"
        raise ConfigError(f"{key}: {path} does not exist; give roiloc.template=/path/to/t1.nii.gz")
    return path


def _to_sitk(array: np.ndarray, affine: np.ndarray) -> Any:
    """SimpleITK image (LPS physical space) of an ``(X, Y, Z)`` array with a RAS affine."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32))
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction = _LPS @ affine[:3, :3] @ np.diag(1 / zooms)
    image.SetSpacing([float(z) for z in zooms])
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetOrigin([float(v) for v in _LPS @ affine[:3, 3]])
    return image


def _block_mean(
    array: np.ndarray, affine: np.ndarray, spacing_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Average ``array`` over blocks of about ``spacing_mm`` (integer factors per axis)."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    factors = np.maximum(np.round(spacing_mm / zooms), 1).astype(int)
    shape = np.asarray(array.shape) // factors
    if (shape < 4).any():  # too small to shrink: keep the grid
        return array, affine
    cut = array[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    blocks = cut.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    small = blocks.mean(axis=(1, 3, 5), dtype=np.float32)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(factors)
    scale[:3, 3] = (factors - 1) / 2  # centre of each block
    return small, affine @ scale


@dataclass(frozen=True)
class Registration:
    """A registration of the template to a subject.

    Attributes:
        transform: SimpleITK transform mapping template points to subject points (LPS mm).
        quality: minus the final Mattes mutual information (higher is better; ~0 for an
            image with nothing in common with a head).
        scales: singular values of the transform's linear part (1 = template size).
    """

    transform: Any
    quality: float
    scales: tuple[float, float, float]


def rigid_registration(sampling: float, seed: int, iterations: int) -> Any:
    """A SimpleITK registration method as every hsftrain registration uses it: Mattes mutual
    information on a seeded random ``sampling`` share of voxels, linear interpolation,
    regular-step gradient descent with physical-shift scales, two levels (shrink 2, 1).
    The caller sets the initial transform (and a mask or thread count if needed)."""
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed + 1)  # SimpleITK: seed 0 = wall clock
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=int(iterations),
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def register_template(
    volume: Volume,
    template: str | None = None,
    transform: str = "affine",
    registration_mm: float = 4.0,
    iterations: int = 200,
    seed: int = 0,
) -> Registration:
    """Register the MNI template to ``volume``.

    Returns:
        the transform (template -> subject, LPS mm) and how well it fits.

    Raises:
        ConfigError: unknown ``roiloc.transform`` or missing template.
    """
    import nibabel as nib
    import SimpleITK as sitk

    if transform not in ("rigid", "affine"):
        raise ConfigError(f"roiloc.transform={transform!r}: use rigid or affine")
    tpl = nib.load(str(template_path(template)))
    tpl_array = np.asarray(tpl.dataobj, dtype=np.float32)
    fixed = _to_sitk(*_block_mean(tpl_array, np.asarray(tpl.affine), registration_mm))
    moving = _to_sitk(*_block_mean(volume.array, volume.affine, registration_mm))
    mask = sitk.Cast(
        sitk.BinaryThreshold(fixed, 1e-3 * float(tpl_array.max()), 1e30), sitk.sitkUInt8
    )

    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )

    final: list[float] = []

    def run(start: Any, scales_from: str) -> Any:
        reg = rigid_registration(0.25, seed, iterations)
        reg.SetMetricFixedMask(mask)
        reg.SetInitialTransform(start, inPlace=False)
        result = reg.Execute(fixed, moving)
        log.debug(
            "%s registration: metric %.4f, %s",
            scales_from,
            reg.GetMetricValue(),
            reg.GetOptimizerStopConditionDescription(),
        )
        final.append(float(reg.GetMetricValue()))
        return result

    rigid = run(initial, "rigid")
    if transform == "rigid":
        return _result(rigid, final[-1])
    affine = sitk.AffineTransform(3)
    rigid_flat = (
        sitk.CompositeTransform(rigid).GetNthTransform(0)
        if isinstance(rigid, sitk.CompositeTransform)
        else rigid
    )
    euler = sitk.Euler3DTransform(rigid_flat)
    affine.SetMatrix(euler.GetMatrix())
    affine.SetTranslation(euler.GetTranslation())
    affine.SetCenter(euler.GetCenter())
    return _result(run(affine, "affine"), final[-1])


def _result(tfm: Any, metric: float) -> Registration:
    """Registration with the quality numbers of transform ``tfm`` (final metric ``metric``)."""
    import SimpleITK as sitk

    inner = tfm.GetNthTransform(0) if isinstance(tfm, sitk.CompositeTransform) else tfm
    matrix = np.eye(3).ravel()
    for kind in (sitk.AffineTransform, sitk.Euler3DTransform):
        try:
            matrix = np.asarray(kind(inner).GetMatrix(), dtype=np.float64)
            break
        except (RuntimeError, TypeError):  # not that transform type
            continue
    scales = np.linalg.svd(matrix.reshape(3, 3), compute_uv=False)
    quality = -metric if np.isfinite(metric) else 0.0
    return Registration(tfm, float(quality), tuple(float(s) for s in scales))  # type: ignore[arg-type]


def _vec(cfg: Mapping[str, Any], key: str, side: str, default: Sequence[float]) -> list[float]:
    value = cfg.get(key) or {}
    value = value.get(side, default) if isinstance(value, Mapping) else value
    out = [float(v) for v in value]
    if len(out) != 3:
        raise ConfigError(f"roiloc.{key}.{side} must have 3 values (mm), got {value!r}")
    return out


@dataclass(frozen=True)
class Localization:
    """Where the hippocampi of a whole head are, and whether to trust it.

    Attributes:
        boxes: one box per side.
        registration: the template registration the boxes come from.
        problem: why the registration looks wrong ("" when it looks fine).
    """

    boxes: list[Box]
    registration: Registration
    problem: str = ""


def registration_problem(reg: Registration, cfg: Mapping[str, Any]) -> str:
    """Why a registration looks wrong (see the module doc), or "".

    Raises:
        ConfigError: ``roiloc.min_quality`` negative or ``roiloc.max_scale`` below 1.
    """
    min_quality = float(cfg.get("min_quality", 0.05) or 0.0)
    max_scale = float(cfg.get("max_scale", 1.6) or 0.0)
    if min_quality < 0:
        raise ConfigError(f"roiloc.min_quality={min_quality}: must be >= 0 (0: no check)")
    if max_scale and max_scale < 1:
        raise ConfigError(f"roiloc.max_scale={max_scale}: must be >= 1 (0: no check)")
    problems = []
    if reg.quality < min_quality:
        problems.append(
            f"whole-head registration quality {reg.quality:.3f} < roiloc.min_quality "
            f"{min_quality:g}: the image may not be a head"
        )
    if max_scale and (max(reg.scales) > max_scale or min(reg.scales) < 1 / max_scale):
        shown = ", ".join(f"{s:.2f}" for s in reg.scales)
        problems.append(
            f"the template had to be scaled by {shown} (roiloc.max_scale {max_scale:g}): "
            "the head was not matched"
        )
    return "; ".join(problems)


def locate_hippocampi(
    volume: Volume,
    cfg: Mapping[str, Any],
    seed: int = 0,
    field_of_view_mm: Sequence[float] | None = None,
) -> list[Box]:
    """Left and right hippocampus boxes of a whole-head ``volume`` (``roiloc`` config), sized
    to ``field_of_view_mm`` (the model's training crops, see
    :func:`~hsftrain.inference.boxes.crop_extent`) when given."""
    return localize(volume, cfg, seed, field_of_view_mm).boxes


def localize(
    volume: Volume,
    cfg: Mapping[str, Any],
    seed: int = 0,
    field_of_view_mm: Sequence[float] | None = None,
) -> Localization:
    """:func:`locate_hippocampi` with the registration and its :func:`registration_problem`.

    Raises:
        ConfigError: a bad ``roiloc`` key (named).
    """
    import SimpleITK as sitk  # noqa: F401  (fail early with a clear ImportError)

    extent = crop_extent(cfg, field_of_view_mm)
    reg = register_template(
        volume,
        template=cfg.get("template"),
        transform=str(cfg.get("transform", "affine")),
        registration_mm=float(cfg.get("registration_mm", 4.0)),
        iterations=int(cfg.get("iterations", 200)),
        seed=seed,
    )
    box_mm = [float(v) for v in cfg.get("box_mm", (32, 48, 36))]
    margin = [float(v) for v in cfg.get("margin_mm", (8, 8, 8))]

    def to_subject(point: Sequence[float]) -> np.ndarray:
        mapped = reg.transform.TransformPoint([float(v) for v in _LPS @ np.asarray(point)])
        return np.asarray(_LPS @ np.asarray(mapped, dtype=np.float64))

    boxes = []
    for side in cfg.get("sides", SIDES):
        if side not in SIDES:
            raise ConfigError(f"roiloc.sides: {side!r} is not one of {', '.join(SIDES)}")
        offsets = zip(
            _vec(cfg, "centers_mm", side, (0, 0, 0)),
            _vec(cfg, "offsets_mm", side, (0, 0, 0)),
            strict=True,
        )
        center = [c + o for c, o in offsets]
        if extent is not None:  # the model's field of view around the (shifted) centre
            shift = FovSettings.from_config(cfg).shift_mm
            shifted = [c + float(s) for c, s in zip(center, shift, strict=True)]
            boxes.append(fov_box(side, to_subject(shifted), volume, extent))
            continue
        mapped = np.array([to_subject(c) for c in template_box_corners(center, box_mm)])
        boxes.append(box_from_points(side, mapped, volume, margin))
    problem = registration_problem(reg, cfg)
    if problem:
        log.warning("%s: %s", volume.path.name, problem)
    return Localization(boxes, reg, problem)

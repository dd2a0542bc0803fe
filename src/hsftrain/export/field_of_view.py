"""The size of the crops a model was trained on, stored in its ONNX metadata as
``field_of_view_mm``.

It is the per-axis median of the training images' extent (shape x voxel size, mm) along
the canonical RAS axes, read from the NIfTI headers of the run's training subjects
(``split.json`` + the checkpoint's datasets config), like ``spacing_mm``
(:mod:`hsftrain.export.spacing`). ``hsftrain segment`` sizes the crops of a whole head to
it (:mod:`hsftrain.inference.boxes`): a model trained on tight crops is not shown
structures it never saw. A run with a dataset cropped to its labels
(``crop_margin_mm``) trained on crops the headers do not describe: its model gets no
``field_of_view_mm`` (whole-head crops keep ``roiloc.box_mm``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.core.onnx_metadata import FIELD_OF_VIEW_KEY as KEY

log = logging.getLogger(__name__)


def canonical_extent(path: str | Path) -> tuple[float, float, float]:
    """Extent (mm) of an image along the canonical RAS axes (header only)."""
    import nibabel as nib
    from nibabel import orientations

    image = nib.load(str(path))
    affine = np.asarray(image.affine, dtype=np.float64)
    sizes = np.asarray(image.shape[:3], dtype=np.float64) * np.sqrt((affine[:3, :3] ** 2).sum(0))
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(orientations.io_orientation(affine)):
        out[int(target)] = float(sizes[axis])
    return out[0], out[1], out[2]


def median_field_of_view(images: Sequence[str | Path]) -> tuple[float, float, float] | None:
    """Per-axis median canonical extent (mm, rounded to 0.1) of ``images``, or None.

    Example:
        ``median_field_of_view(sorted(Path("imagesTr").glob("*.nii.gz")))`` gives
        ``(35.0, 50.0, 36.0)`` for the 208 MSD hippocampus crops.
    """
    extents = [canonical_extent(p) for p in images]
    if not extents:
        return None
    x, y, z = (round(float(v), 1) for v in np.median(np.asarray(extents), axis=0))
    return x, y, z


def field_of_view_metadata(ckpt: str | Path, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"field_of_view_mm": [x, y, z]}`` for the run of ``ckpt``; empty (logged) when its
    training images cannot be found or a dataset was cropped to its labels."""
    from hsftrain.core.errors import ConfigError
    from hsftrain.export.calibration import run_training_images

    entries = ((config or {}).get("datasets") or {}).get("datasets") or {}
    cropped = [str(n) for n, e in entries.items() if (e or {}).get("crop_margin_mm") is not None]
    if cropped:
        log.info(
            "datasets %s are cropped to their labels: no %s in the model", ", ".join(cropped), KEY
        )
        return {}
    try:
        fov = median_field_of_view(run_training_images(ckpt, config or {}))
    except (ConfigError, OSError) as err:
        log.info("training crop size unknown (%s): no %s in the model", err, KEY)
        return {}
    if fov is None:
        return {}
    log.info("training crop size (median): %s mm", "x".join(f"{v:g}" for v in fov))
    return {KEY: list(fov)}

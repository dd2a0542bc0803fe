"""The voxel sizes a model was trained at, stored in its ONNX metadata.

``spacing_mm`` is the per-axis median of the training images' voxel sizes along the
canonical RAS axes (the axes inference works on), read from the NIfTI headers of the run's
training subjects (``split.json`` + the checkpoint's datasets config); ``hsftrain
segment`` compares each crop with it (:mod:`hsftrain.inference.resample`).
``spacing_mm_counts`` lists every voxel size the network saw with its number of images
(``[{"spacing_mm": [1, 1, 1], "images": 12}, {"spacing_mm": [2, 2, 2], "images": 3}]``,
most frequent first), so a model trained on mixed sizes says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _zooms(images: Sequence[str | Path]) -> list[tuple[float, float, float]]:
    """Canonical voxel size of each image (headers only)."""
    import nibabel as nib

    from hsftrain.data.nifti import canonical_zooms

    return [canonical_zooms(nib.load(str(p)).affine) for p in images]


def median_spacing(images: Sequence[str | Path]) -> tuple[float, float, float] | None:
    """Per-axis median canonical voxel size of ``images`` (headers only), or None."""
    from hsftrain.data.voxel_sizes import median_size

    zooms = _zooms(images)
    return median_size(zooms) if zooms else None


def spacing_metadata(ckpt: str | Path, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"spacing_mm": median, "spacing_mm_counts": [...]}`` for the run of ``ckpt``
    (logged, with a warning when the sizes are mixed); empty (logged) when its training
    images cannot be found (a checkpoint moved away from its run)."""
    from hsftrain.core.errors import ConfigError
    from hsftrain.data.voxel_sizes import describe, median_size, mixed_warning, size_counts
    from hsftrain.export.calibration import run_training_images

    try:
        zooms = _zooms(run_training_images(ckpt, config or {}))
    except (ConfigError, OSError) as err:
        log.info("training voxel size unknown (%s): no spacing_mm in the model", err)
        return {}
    if not zooms:
        return {}
    spacing, counts = median_size(zooms), size_counts(zooms)
    log.info(
        "training voxel size (median of %d images): %s mm (%s)",
        len(zooms),
        spacing,
        describe(counts),
    )
    if warning := mixed_warning(zooms, f"the {len(zooms)} training images of {ckpt}"):
        log.warning("%s", warning)
    return {
        "spacing_mm": list(spacing),
        "spacing_mm_counts": [{"spacing_mm": list(s), "images": n} for s, n in counts],
    }


def training_spacing(
    ckpt: str | Path, config: Mapping[str, Any] | None
) -> tuple[float, float, float] | None:
    """The training images' median voxel size for the run of ``ckpt`` (``spacing_mm`` of
    :func:`spacing_metadata`); None when its training images cannot be found."""
    spacing = spacing_metadata(ckpt, config).get("spacing_mm")
    if not spacing:
        return None
    x, y, z = (float(v) for v in spacing)
    return x, y, z

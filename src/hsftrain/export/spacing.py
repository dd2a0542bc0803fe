"""The voxel size a model was trained at, stored in its ONNX metadata as ``spacing_mm``.

It is the per-axis median of the training images' voxel sizes along the canonical RAS
axes (the axes inference works on), read from the NIfTI headers of the run's training
subjects (``split.json`` + the checkpoint's datasets config). ``hsftrain segment`` compares
each crop with it (:mod:`hsftrain.inference.resample`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def median_spacing(images: Sequence[str | Path]) -> tuple[float, float, float] | None:
    """Per-axis median canonical voxel size of ``images`` (headers only), or None."""
    import nibabel as nib

    from hsftrain.data.nifti import canonical_zooms

    zooms = [canonical_zooms(nib.load(str(p)).affine) for p in images]
    if not zooms:
        return None
    return tuple(round(float(v), 4) for v in np.median(np.asarray(zooms), axis=0))  # type: ignore[return-value]


def training_spacing(
    ckpt: str | Path, config: Mapping[str, Any] | None
) -> tuple[float, float, float] | None:
    """The training images' median voxel size for the run of ``ckpt``; None (logged) when
    its training images cannot be found (a checkpoint moved away from its run)."""
    from hsftrain.errors import ConfigError
    from hsftrain.export.calibration import run_training_images

    try:
        images = run_training_images(ckpt, config or {})
        spacing = median_spacing(images)
    except (ConfigError, OSError) as err:
        log.info("training voxel size unknown (%s): no spacing_mm in the model", err)
        return None
    log.info("training voxel size (median of %d images): %s mm", len(images), spacing)
    return spacing

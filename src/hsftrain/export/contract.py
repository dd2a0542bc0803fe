"""What a model was trained on, stored in its ONNX metadata for ``hsftrain segment`` to
check each crop against (:mod:`hsftrain.inference.contract`):

* ``contrasts``: the training contrast(s), ``["T1"]``, ``["T2"]`` or both, each dataset's
  median :func:`~hsftrain.data.contrast.contrast_index` read as T1 (< 0) or T2 (> 0);
* ``intensity_fingerprint``: ``{"contrast_index": [1st percentile, median, 99th
  percentile], "images": n}`` over the training crops;
* ``volume_range_mm3``: per class name, and ``hippocampus`` for all foreground classes, the
  1st and 99th percentile of the training labels' volumes (mm3, left and right together;
  maps where a class has no voxel are left out).

They are measured at export, like ``spacing_mm`` (:mod:`hsftrain.export.spacing`), on the
run's training subjects (``split.json`` + the checkpoint's datasets config), each cut to
its labels when its dataset sets ``crop_margin_mm`` (what the network was trained on).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.core.errors import ConfigError
from hsftrain.core.onnx_metadata import CONTRASTS_KEY, FINGERPRINT_KEY, VOLUME_RANGE_KEY, WHOLE
from hsftrain.data.contrast import contrast_index, contrast_name
from hsftrain.data.nifti import DataError
from hsftrain.data.subjects import DatasetSpec

log = logging.getLogger(__name__)

#: Most training subjects read (evenly spaced over the training list).
MAX_SUBJECTS = 256


def training_pairs(
    ckpt: str | Path, config: Mapping[str, Any]
) -> list[tuple[DatasetSpec, Path, Path]]:
    """``(dataset, image, label)`` of each training subject of the run that wrote ``ckpt``
    (its images: :func:`hsftrain.export.calibration.run_training_images`).

    Raises:
        ConfigError: no ``split.json`` next to the run, no datasets config, or missing
            training images.
        DataError: a dataset whose labels cannot be found.
    """
    from hsftrain.data.discovery import find_pairs
    from hsftrain.export.calibration import run_training_images

    images = run_training_images(ckpt, config)
    datasets = config.get("datasets") or {}
    main_path = Path(str(datasets.get("main_path") or ".")).expanduser()
    labelled: dict[Path, tuple[DatasetSpec, Path, Path]] = {}
    for index, (name, entry) in enumerate((datasets.get("datasets") or {}).items()):
        spec = DatasetSpec.from_config(str(name), index, main_path, entry)
        for _, image, label in find_pairs(spec):
            labelled[image.resolve()] = (spec, image, label)
    missing = [p for p in images if p.resolve() not in labelled]
    if missing:
        raise DataError(f"{missing[0]}: no label map found for this training image")
    return [labelled[p.resolve()] for p in images]


def _percentiles(values: Sequence[float], points: Sequence[float], decimals: int) -> list[float]:
    return [round(float(v), decimals) for v in np.percentile(np.asarray(values), points)]


def measure_contract(
    pairs: Sequence[tuple[DatasetSpec, Path, Path]], class_names: Sequence[str]
) -> dict[str, Any]:
    """The ``contrasts``, ``intensity_fingerprint`` and ``volume_range_mm3`` metadata of
    ``pairs`` (at most :data:`MAX_SUBJECTS`, evenly spaced) for a model with
    ``class_names`` (a class is measured on the datasets that name it so, or name nothing).

    Raises:
        DataError: an image or label map that cannot be read.
    """
    from hsftrain.data.crop import crop_to_labels
    from hsftrain.data.discovery import read_label
    from hsftrain.data.nifti import canonical_zooms, load_volume

    if len(pairs) > MAX_SUBJECTS:
        keep = np.linspace(0, len(pairs) - 1, MAX_SUBJECTS).round().astype(int)
        pairs = [pairs[i] for i in dict.fromkeys(keep.tolist())]
    indices: dict[str, list[float]] = {}
    volumes: dict[str, list[float]] = {name: [] for name in (*class_names[1:], WHOLE)}
    for spec, image_path, label_path in pairs:
        image, affine = load_volume(image_path, canonical=True)
        label_map = read_label(spec, label_path, canonical=True)
        if spec.crop_margin_mm is not None and (label_map > 0).any():
            image, label_map, affine = crop_to_labels(image, label_map, affine, spec.crop_margin_mm)
        index = contrast_index(image, canonical_zooms(affine))
        if index is not None:
            indices.setdefault(spec.name, []).append(index)
        voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
        counts = np.bincount(label_map.ravel().astype(np.int64), minlength=len(class_names))
        for value, name in enumerate(class_names[1:], start=1):
            named = spec.labels_names is None or spec.labels_names.get(value) == name
            if named and counts[value]:
                volumes[name].append(int(counts[value]) * voxel_mm3)
        whole = int(counts[1 : len(class_names)].sum())
        if whole:
            volumes[WHOLE].append(whole * voxel_mm3)
    metadata: dict[str, Any] = {}
    every = [v for values in indices.values() for v in values]
    if every:
        metadata[CONTRASTS_KEY] = sorted(
            {contrast_name(float(np.median(values))) for values in indices.values()}
        )
        metadata[FINGERPRINT_KEY] = {
            "contrast_index": _percentiles(every, (1, 50, 99), 4),
            "images": len(every),
        }
    ranges = {name: _percentiles(v, (1, 99), 1) for name, v in volumes.items() if v}
    if ranges:
        metadata[VOLUME_RANGE_KEY] = ranges
    return metadata


def training_contract(
    ckpt: str | Path, config: Mapping[str, Any] | None, class_names: Sequence[str]
) -> dict[str, Any]:
    """:func:`measure_contract` on the training subjects of the run of ``ckpt``; empty
    (logged) when they cannot be found or read (a checkpoint moved away from its run)."""
    try:
        pairs = training_pairs(ckpt, config or {})
        metadata = measure_contract(pairs, class_names)
    except (ConfigError, DataError, OSError) as err:
        log.info(
            "training crops unknown (%s): no contrasts, intensity_fingerprint or "
            "volume_range_mm3 in the model (hsftrain segment skips those checks)",
            " ".join(str(err).split()),
        )
        return {}
    fingerprint = metadata.get(FINGERPRINT_KEY, {})
    log.info(
        "training crops (%d): contrast %s, contrast index %s, volumes %s mm3",
        len(pairs),
        "/".join(metadata.get(CONTRASTS_KEY, ["unknown"])),
        fingerprint.get("contrast_index"),
        metadata.get(VOLUME_RANGE_KEY),
    )
    return metadata

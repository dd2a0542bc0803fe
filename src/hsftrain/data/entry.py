"""One entry of the prepared-data cache: its key, how it is written, whether it can be reused.

:func:`write_entry` reads, checks and normalises one subject into a folder (atomically),
with the manifest that :func:`reusable` checks when a later run reuses the entry
(:mod:`hsftrain.data.manifest`). The cache as a whole is :mod:`hsftrain.data.cache`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from hsftrain.core.atomic import write_text_atomic
from hsftrain.data.crop import crop_to_labels
from hsftrain.data.discovery import read_label
from hsftrain.data.intensity import z_normalize
from hsftrain.data.manifest import BrokenEntry, check, discard, stamps
from hsftrain.data.nifti import DataError, load_volume
from hsftrain.data.subjects import DatasetSpec, Subject
from hsftrain.hub.fetch import file_hash

log = logging.getLogger(__name__)

#: Bumped whenever the stored arrays change meaning: older entries are then ignored.
FORMAT_VERSION = 1
#: Foreground voxel coordinates kept per subject for foreground oversampling.
MAX_FG_COORDS = 20000
DTYPES = ("float16", "float32")
NONFINITE = ("error", "clean")


@dataclass(frozen=True)
class PrepareSettings:
    """Everything besides the files that changes a prepared entry."""

    dtype: str = "float16"
    nonfinite: str = "error"

    @classmethod
    def from_config(cls, datasets_cfg: Mapping[str, Any]) -> PrepareSettings:
        """From the ``datasets`` group (``cache_dtype``, ``nonfinite``).

        Raises:
            DataError: an unknown value (the key is named).
        """
        dtype = str(datasets_cfg.get("cache_dtype") or "float16")
        nonfinite = str(datasets_cfg.get("nonfinite") or "error")
        if dtype not in DTYPES:
            raise DataError(f"datasets.cache_dtype={dtype!r}: use one of {', '.join(DTYPES)}")
        if nonfinite not in NONFINITE:
            raise DataError(
                f"datasets.nonfinite={nonfinite!r}: use 'error' (refuse images with NaN/Inf "
                "voxels) or 'clean' (replace them, logged)"
            )
        return cls(dtype, nonfinite)


def entry_key(subject: Subject, spec: DatasetSpec, settings: PrepareSettings) -> str:
    """Hash of the image and label contents and of the preparation settings."""
    recipe = {
        "version": FORMAT_VERSION,
        "image": file_hash(subject.image),
        "label": file_hash(subject.label),
        "labels": sorted((spec.labels or {}).items()),
        "dtype": settings.dtype,
        "nonfinite": settings.nonfinite,
    }
    if spec.crop_margin_mm is not None:  # only then: other entries keep their keys
        recipe["crop_margin_mm"] = float(spec.crop_margin_mm)
    return xxhash.xxh3_64(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _finite(image: np.ndarray, path: Path, policy: str) -> np.ndarray:
    """The image with non-finite voxels refused (``error``) or replaced by the median of
    the finite ones (``clean``, logged).

    Raises:
        DataError: non-finite voxels with the ``error`` policy, or no finite voxel at all.
    """
    bad = ~np.isfinite(image)
    n_bad = int(bad.sum())
    if not n_bad:
        return image
    if policy != "clean" or n_bad == image.size:
        raise DataError(
            f"{path}: {n_bad} voxel(s) are NaN or infinite; fix the image, or set "
            "datasets.nonfinite=clean to replace them with the median intensity"
        )
    fill = float(np.median(image[~bad]))
    log.warning("%s: %d non-finite voxel(s) replaced by the median %.4g", path, n_bad, fill)
    image = image.copy()
    image[bad] = fill
    return image


def _foreground_sample(label: np.ndarray, seed: int) -> np.ndarray:
    coords = np.argwhere(label > 0)
    if len(coords) > MAX_FG_COORDS:
        keep = np.random.default_rng(seed).choice(len(coords), MAX_FG_COORDS, replace=False)
        coords = coords[np.sort(keep)]
    return coords.astype(np.int16)


def write_entry(
    folder: Path,
    subject: Subject,
    spec: DatasetSpec,
    settings: PrepareSettings,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Read, check and normalise one subject into ``folder`` (atomically), with the
    manifest that reuse checks (:mod:`hsftrain.data.manifest`).

    Raises:
        DataError: unreadable/truncated files, non-finite voxels, label values missing
            from the mapping or above 255.
        OSError: the cache folder cannot be written.
    """
    # discovery has checked from the headers that the label map lies on the image grid
    image, affine = load_volume(subject.image, np.float32, canonical=True)
    label = read_label(spec, subject.label, canonical=True)
    if label.max(initial=0) > 255:
        raise DataError(
            f"{subject.label}: label value {int(label.max())} after remapping; training "
            f"values must be < 256: remap them in datasets.datasets.{spec.name}.labels"
        )
    if spec.crop_margin_mm is not None:
        try:
            image, label, affine = crop_to_labels(image, label, affine, spec.crop_margin_mm)
        except DataError as err:
            raise DataError(
                f"{subject.label}: {err} (datasets.datasets.{spec.name}.crop_margin_mm)"
            ) from err
    image = _finite(image, subject.image, settings.nonfinite)
    low, high = np.percentile(image, [0.5, 99.5])
    intensity = {
        "mean": float(image.mean()),
        "std": float(image.std()),
        "p0.5": float(low),
        "p99.5": float(high),
    }
    image = z_normalize(image).astype(settings.dtype)
    label = label.astype(np.uint8)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    meta = {
        "version": FORMAT_VERSION,
        "id": subject.id,
        "image": str(subject.image),
        "label": str(subject.label),
        "shape": [int(s) for s in image.shape],
        "spacing": [float(s) for s in spacing],
        "minimum": float(image.min()),
        "intensity": intensity,
        "affine": affine.tolist(),
        "num_classes": num_classes,
        "label_values": [int(v) for v in np.flatnonzero(np.bincount(label.ravel(), minlength=1))],
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        np.save(tmp / "image.npy", image)
        np.save(tmp / "label.npy", label)
        np.save(tmp / "fg.npy", _foreground_sample(label, seed=len(subject.id)))
        meta["files"] = stamps(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process prepared it meanwhile
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def replace_entry(
    folder: Path,
    subject: Subject,
    spec: DatasetSpec,
    settings: PrepareSettings,
    num_classes: int | None,
) -> dict[str, Any]:
    """:func:`write_entry` in place of whatever ``folder`` holds."""
    discard(folder)
    return write_entry(folder, subject, spec, settings, num_classes)


def meta_file(folder: Path) -> dict[str, Any]:
    """An entry's ``meta.json``.

    Raises:
        BrokenEntry: missing, unreadable, or not an entry's description.
    """
    path = folder / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise BrokenEntry(f"{path} is missing") from None
    except (OSError, ValueError) as err:
        raise BrokenEntry(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or not {"shape", "spacing", "minimum"} <= set(meta):
        raise BrokenEntry(f"{path} does not describe a prepared entry")
    return meta


def reusable(
    folder: Path, image_dtype: str, num_classes: int | None
) -> tuple[dict[str, Any] | None, str | None]:
    """``(meta, None)`` for an entry that can be reused (checked, see
    :func:`hsftrain.data.manifest.check`); ``(None, why)`` for a broken one; ``(None,
    None)`` when there is none (or one of another format)."""
    if not folder.exists():
        return None, None
    try:
        meta = meta_file(folder)
        if meta.get("version") != FORMAT_VERSION:
            return None, None
        checked = check(folder, meta, image_dtype, num_classes)
    except BrokenEntry as err:
        return None, str(err)
    if checked is not None:  # verified voxel by voxel: record it (a read-only cache: next time)
        meta = checked
        with contextlib.suppress(OSError):
            write_text_atomic(folder / "meta.json", json.dumps(meta, indent=1))
    return meta, None

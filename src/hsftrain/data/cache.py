"""The prepared-data cache: every subject read, checked and normalised once.

Training used to re-read each ``.nii.gz``, reorient it, remap its labels and normalise it at
every step. :func:`prepare` does that work once per subject (the nnU-Net way) and stores the
result uncompressed, as memory-mappable ``.npy`` arrays:

``<cache_dir>/<key>/image.npy``  (X, Y, Z) float16 or float32, z-normalised, RAS+
``<cache_dir>/<key>/label.npy``  (X, Y, Z) uint8, remapped to the dataset's training values
``<cache_dir>/<key>/fg.npy``     (N, 3) int16, a sample of foreground voxel coordinates
``<cache_dir>/<key>/meta.json``  shape, spacing, affine, source files (written last)

``key`` is a hash of both files' contents and of every setting that changes the result
(label table, dtype, non-finite policy, format version): a changed file or setting gets a
new entry and a stale one is never used. Each entry is written into a temporary folder and
renamed into place, so an interrupted preparation leaves nothing half-written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xxhash

from hsftrain.data.crop import crop_to_labels
from hsftrain.data.discovery import discover, read_label
from hsftrain.data.intensity import z_normalize
from hsftrain.data.nifti import DataError, load_volume
from hsftrain.data.subjects import DatasetSpec, Discovery, Subject
from hsftrain.hub.fetch import file_hash

log = logging.getLogger(__name__)

#: Bumped whenever the stored arrays change meaning: older entries are then ignored.
FORMAT_VERSION = 1
#: Foreground voxel coordinates kept per subject for foreground oversampling.
MAX_FG_COORDS = 20000
DTYPES = ("float16", "float32")
NONFINITE = ("error", "clean")


@dataclass(frozen=True)
class PreparedSubject:
    """One subject in the cache. Arrays are opened memory-mapped by :meth:`arrays`."""

    id: str
    dataset: int
    folder: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    minimum: float

    def arrays(self, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(image (X, Y, Z) float, label (X, Y, Z) uint8)``, memory-mapped by default."""
        mode: Literal["r"] | None = "r" if mmap else None
        return (
            np.load(self.folder / "image.npy", mmap_mode=mode),
            np.load(self.folder / "label.npy", mmap_mode=mode),
        )

    def meta(self) -> dict[str, Any]:
        """The entry's ``meta.json`` (shape, spacing, affine, raw intensity statistics)."""
        return dict(json.loads((self.folder / "meta.json").read_text()))

    def foreground(self) -> np.ndarray:
        """``(N, 3)`` sampled foreground voxel coordinates (N may be 0)."""
        return np.load(self.folder / "fg.npy")


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


def cache_dir(datasets_cfg: Mapping[str, Any]) -> Path:
    """``datasets.cache_dir``, else ``<datasets.output_path>/prepared``."""
    explicit = datasets_cfg.get("cache_dir")
    if explicit:
        return Path(str(explicit)).expanduser()
    return Path(str(datasets_cfg.get("output_path") or "runs")).expanduser() / "prepared"


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


def _write_entry(
    folder: Path, subject: Subject, spec: DatasetSpec, settings: PrepareSettings
) -> dict[str, Any]:
    """Read, check and normalise one subject into ``folder`` (atomically).

    Raises:
        DataError: unreadable/truncated files, non-finite voxels, label values missing
            from the mapping or above 255.
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
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        np.save(tmp / "image.npy", image)
        np.save(tmp / "label.npy", label.astype(np.uint8))
        np.save(tmp / "fg.npy", _foreground_sample(label, seed=len(subject.id)))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process prepared it meanwhile
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("version") == FORMAT_VERSION else None


def prepare(
    found: Discovery,
    root: Path,
    settings: PrepareSettings | None = None,
    subjects: Sequence[int] | None = None,
    progress: bool = True,
) -> list[PreparedSubject]:
    """Prepare every subject (or those at indices ``subjects``) into the cache at ``root``.

    Entries already there (same contents, same settings) are reused without reading the
    images. Returns the prepared subjects in the order of ``found.subjects``.

    Raises:
        DataError: a file that cannot be used (named, with the fix); entries prepared
            before it are kept.
    """
    settings = settings or PrepareSettings()
    specs = {s.index: s for s in found.datasets}
    chosen = list(range(len(found.subjects))) if subjects is None else list(subjects)
    out: list[PreparedSubject] = []
    made = 0
    bar = _progress(progress)
    with bar:
        task = bar.add_task("preparing data", total=len(chosen))
        for i in chosen:
            subject = found.subjects[i]
            spec = specs[subject.dataset]
            folder = root / entry_key(subject, spec, settings)
            meta = _read_meta(folder)
            if meta is None:
                shutil.rmtree(folder, ignore_errors=True)  # an entry of another format
                meta = _write_entry(folder, subject, spec, settings)
                made += 1
            out.append(
                PreparedSubject(
                    id=subject.id,
                    dataset=subject.dataset,
                    folder=folder,
                    shape=tuple(meta["shape"]),
                    spacing=tuple(meta["spacing"]),
                    minimum=float(meta["minimum"]),
                )
            )
            bar.advance(task)
    log.info(
        "prepared data in %s: %d subject(s), %d newly prepared, %d reused",
        root,
        len(out),
        made,
        len(out) - made,
    )
    return out


def _progress(enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=True,
    )


def median_shape(prepared: Sequence[PreparedSubject]) -> tuple[int, int, int]:
    """Median (X, Y, Z) shape of the prepared subjects."""
    shapes = np.array([p.shape for p in prepared])
    return tuple(int(v) for v in np.median(shapes, axis=0))  # type: ignore[return-value]


def prepare_datasets(cfg: Mapping[str, Any]) -> list[PreparedSubject]:
    """``hsftrain data prepare``: discover the ``datasets`` group's subjects and prepare
    all of them; logs where the cache is and the data's median shape and spacing.

    Raises:
        DataError: a file that cannot be used (named, with the fix).
    """
    datasets_cfg = cfg["datasets"]
    found = discover(datasets_cfg)
    root = cache_dir(datasets_cfg)
    prepared = prepare(found, root, PrepareSettings.from_config(datasets_cfg))
    spacing = np.median(np.array([p.spacing for p in prepared]), axis=0)
    log.info(
        "%d subject(s) ready in %s: median shape %s, median spacing %s mm",
        len(prepared),
        root,
        "x".join(map(str, median_shape(prepared))),
        "x".join(f"{s:.2f}" for s in spacing),
    )
    return prepared

"""The prepared-data cache: every subject read, checked and normalised once.

Training used to re-read each ``.nii.gz``, reorient it, remap its labels and normalise it at
every step. :func:`prepare` does that work once per subject (the nnU-Net way) and stores the
result uncompressed, as memory-mappable ``.npy`` arrays:

``<cache_dir>/<key>/image.npy``  (X, Y, Z) float16 or float32, z-normalised, RAS+
``<cache_dir>/<key>/label.npy``  (X, Y, Z) uint8, remapped to the dataset's training values
``<cache_dir>/<key>/fg.npy``     (N, 3) int16, a sample of foreground voxel coordinates
``<cache_dir>/<key>/meta.json``  shape, spacing, affine, source files, and the manifest
                                 of the arrays (written last)

``key`` is a hash of both files' contents and of every setting that changes the result
(label table, dtype, non-finite policy, format version): a changed file or setting gets a
new entry and a stale one is never used. Each entry is written into a temporary folder and
renamed into place, so an interrupted preparation leaves nothing half-written.

A reused entry is checked against its manifest (:mod:`hsftrain.data.manifest`) when a run
starts, and each file again where it is opened; a broken entry (a file missing, truncated,
rewritten with other values) is prepared again from its source with a warning, or refused
with a :class:`~hsftrain.data.manifest.CacheError` naming the file and ``datasets.cache_dir``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hsftrain.core.errors import stop_on_signals
from hsftrain.data.discovery import discover
from hsftrain.data.entry import (
    DTYPES,
    FORMAT_VERSION,
    MAX_FG_COORDS,
    NONFINITE,
    PrepareSettings,
    entry_key,
    meta_file,
    replace_entry,
    reusable,
)
from hsftrain.data.manifest import KEY, BrokenEntry, CacheError, load
from hsftrain.data.manifest import write_error as cache_write_error
from hsftrain.data.nifti import DataError
from hsftrain.data.subjects import DatasetSpec, Discovery, Subject
from hsftrain.data.voxel_sizes import warn_if_mixed

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "MAX_FG_COORDS",
    "NONFINITE",
    "CacheError",
    "PrepareSettings",
    "PreparedSubject",
    "Source",
    "cache_dir",
    "entry_key",
    "median_shape",
    "prepare",
    "prepare_datasets",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """What a cache entry is prepared from, so that it can be prepared again in a run."""

    subject: Subject
    spec: DatasetSpec
    settings: PrepareSettings


@dataclass(frozen=True)
class PreparedSubject:
    """One subject in the cache. Arrays are opened memory-mapped by :meth:`arrays`.

    A file found missing, unreadable or not as prepared when it is opened (the cache
    changed during the run) is prepared again from :attr:`source` (one warning); without
    a source, or when that fails, a :class:`CacheError` names the file and
    ``datasets.cache_dir``.
    """

    id: str
    dataset: int
    folder: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    minimum: float
    #: the dataset's class count: label values must lie below it (None: not checked)
    num_classes: int | None = None
    source: Source | None = field(default=None, repr=False, compare=False)

    def arrays(self, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(image (X, Y, Z) float, label (X, Y, Z) uint8)``, memory-mapped by default
        (whole arrays, ``mmap=False``, also have their label values checked).

        Raises:
            CacheError: a broken file that cannot be prepared again.
        """
        return self._read(lambda: self._arrays(mmap))

    def meta(self) -> dict[str, Any]:
        """The entry's ``meta.json`` (shape, spacing, affine, raw intensity statistics).

        Raises:
            CacheError: as :meth:`arrays`.
        """
        return self._read(lambda: meta_file(self.folder))

    def foreground(self) -> np.ndarray:
        """``(N, 3)`` sampled foreground voxel coordinates (N may be 0).

        Raises:
            CacheError: as :meth:`arrays`.
        """
        return self._read(lambda: load(self.folder / "fg.npy"))

    def _arrays(self, mmap: bool) -> tuple[np.ndarray, np.ndarray]:
        image = load(self.folder / "image.npy", mmap)
        label = load(self.folder / "label.npy", mmap)
        for name, array in (("image.npy", image), ("label.npy", label)):
            if array.shape != tuple(self.shape):
                raise BrokenEntry(
                    f"{self.folder / name} has shape {array.shape}, prepared as {self.shape}"
                )
        if label.dtype != np.uint8:
            raise BrokenEntry(f"{self.folder / 'label.npy'} holds {label.dtype}, not uint8")
        n = self.num_classes
        if not mmap and n and label.size and int(label.max()) >= n:
            raise BrokenEntry(
                f"{self.folder / 'label.npy'} holds label value {int(label.max())}, outside "
                f"the dataset's {n} classes (0-{n - 1})"
            )
        return image, label

    def _read(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except BrokenEntry as err:
            self._prepare_again(str(err))
        try:
            return read()
        except BrokenEntry as err:
            raise CacheError(
                f"{err}, even after it was prepared again: check the disk of "
                f"{KEY}={self.folder.parent}, or set {KEY} to another folder"
            ) from None

    def _prepare_again(self, reason: str) -> None:
        """Replace the broken entry by a new one from its unchanged source.

        Raises:
            CacheError: no source, a source gone or changed, or a cache not writable.
        """
        root = self.folder.parent
        changed = f"{reason}: the prepared-data cache ({KEY}={root}) changed during the run"
        if self.source is None:
            raise CacheError(f"{changed}; prepare it again with `hsftrain data prepare`")
        subject, spec, settings = self.source.subject, self.source.spec, self.source.settings
        try:
            same = entry_key(subject, spec, settings) == self.folder.name
        except OSError as err:
            raise CacheError(
                f"{changed}, and cannot be prepared again: {err.filename}: "
                f"{err.strerror or err}; restore it, or start the run again"
            ) from None
        if not same:
            raise CacheError(
                f"{changed}, and cannot be prepared again: {subject.image} or "
                f"{subject.label} changed since the run started; start the run again"
            )
        try:
            replace_entry(self.folder, subject, spec, settings, self.num_classes)
        except DataError as err:
            raise CacheError(f"{changed}, and cannot be prepared again: {err}") from None
        except OSError as err:
            raise cache_write_error(root, err, changed) from None
        log.warning("%s; prepared %s again from %s", changed, self.id, subject.image)


def cache_dir(datasets_cfg: Mapping[str, Any]) -> Path:
    """``datasets.cache_dir``, else ``<datasets.output_path>/prepared``."""
    explicit = datasets_cfg.get("cache_dir")
    if explicit:
        return Path(str(explicit)).expanduser()
    return Path(str(datasets_cfg.get("output_path") or "runs")).expanduser() / "prepared"


def prepare(
    found: Discovery,
    root: Path,
    settings: PrepareSettings | None = None,
    subjects: Sequence[int] | None = None,
    progress: bool = True,
) -> list[PreparedSubject]:
    """Prepare every subject (or those at indices ``subjects``) into the cache at ``root``.

    Entries already there (same contents, same settings) are reused without reading the
    images, once their files pass the manifest check; broken ones are prepared again (one
    warning names them). Returns the prepared subjects in the order of ``found.subjects``.

    Raises:
        DataError: a file that cannot be used (named, with the fix); entries prepared
            before it are kept.
        CacheError: ``root`` cannot be written (``datasets.cache_dir`` named).
        Interrupted: SIGTERM / SIGINT, once the subject in progress is prepared.
    """
    settings = settings or PrepareSettings()
    specs = {s.index: s for s in found.datasets}
    chosen = list(range(len(found.subjects))) if subjects is None else list(subjects)
    out: list[PreparedSubject] = []
    made = 0
    broken: list[str] = []
    bar = _progress(progress)
    with bar, stop_on_signals("stopping after the subject in progress") as stop:
        task = bar.add_task("preparing data", total=len(chosen))
        for i in chosen:
            subject = found.subjects[i]
            spec = specs[subject.dataset]
            n_classes = len(found.dataset_classes.get(spec.index) or ()) or None
            folder = root / entry_key(subject, spec, settings)
            meta, why = reusable(folder, settings.dtype, n_classes)
            if meta is None:
                if why:
                    broken.append(why)
                try:
                    meta = replace_entry(folder, subject, spec, settings, n_classes)
                except OSError as err:
                    raise cache_write_error(root, err, why) from None
                made += 1
            out.append(
                PreparedSubject(
                    id=subject.id,
                    dataset=subject.dataset,
                    folder=folder,
                    shape=tuple(meta["shape"]),
                    spacing=tuple(meta["spacing"]),
                    minimum=float(meta["minimum"]),
                    num_classes=n_classes,
                    source=Source(subject, spec, settings),
                )
            )
            bar.advance(task)
            stop.raise_if_stopped(  # SIGTERM / Ctrl+C: each entry is whole (written atomically)
                f"data preparation stopped after {len(out)} of {len(chosen)} subject(s), kept "
                f"in {root}; run the same command again to prepare the rest"
            )
    if broken:
        log.warning(
            "prepared again %d broken entr%s of the prepared-data cache (%s=%s): %s",
            len(broken),
            "y" if len(broken) == 1 else "ies",
            KEY,
            root,
            "; ".join(broken[:5]) + (f"; and {len(broken) - 5} more" if len(broken) > 5 else ""),
        )
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
    all of them; logs where the cache is and the data's median shape and spacing (a
    warning with the count per voxel size when they are mixed).

    Raises:
        DataError: a file that cannot be used (named, with the fix).
        CacheError: a cache folder that cannot be written (``datasets.cache_dir``).
    """
    datasets_cfg = cfg["datasets"]
    found = discover(datasets_cfg)
    root = cache_dir(datasets_cfg)
    prepared = prepare(found, root, PrepareSettings.from_config(datasets_cfg))
    warn_if_mixed([p.spacing for p in prepared], "the images")
    spacing = np.median(np.array([p.spacing for p in prepared]), axis=0)
    log.info(
        "%d subject(s) ready in %s: median shape %s, median spacing %s mm",
        len(prepared),
        root,
        "x".join(map(str, median_shape(prepared))),
        "x".join(f"{s:.2f}" for s in spacing),
    )
    return prepared

"""What a prepared-cache entry holds: recorded when it is written, checked when it is reused.

:func:`stamps` records, in the entry's ``meta.json``, each array file's size, modification
time, dtype and shape (with the entry's label values and its dataset's class count, see
:mod:`hsftrain.data.cache`). :func:`check` runs when a run reuses the entry: a ``stat``
and the ``.npy`` header of each file (no voxel is read), so a missing, truncated or
rewritten-with-another-type file is found at once. A file whose size or time differs from
the record (rewritten, or the whole cache copied) has its contents checked as well: label
values within the dataset's classes and as prepared, a finite image, foreground
coordinates on labelled voxels. Nothing is re-hashed per training step; a file that
vanishes or turns unreadable during a run is caught where it is opened
(:meth:`hsftrain.data.cache.PreparedSubject.arrays`).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hsftrain.data.nifti import DataError

#: The arrays of an entry, with their dtype (None: the cache's image dtype) and whether
#: their shape is the volume's (else ``(N, 3)`` coordinates).
ARRAYS: dict[str, tuple[str | None, bool]] = {
    "image.npy": (None, True),
    "label.npy": ("uint8", True),
    "fg.npy": ("int16", False),
}
#: The config key every cache error names.
KEY = "datasets.cache_dir"


class CacheError(DataError):
    """A prepared-data cache that cannot be used or written; the message names the file
    and ``datasets.cache_dir``.

    Raised in a data-loader worker, it reaches the main process as torch re-creates it:
    ``CacheError("Caught CacheError in DataLoader worker process 0. Original Traceback
    ...")``; the original one-line message is taken back out of that text.
    """

    def __init__(self, message: str) -> None:
        if "\nOriginal Traceback" in message:  # re-created by torch from a worker's error
            last = message.rstrip().splitlines()[-1]
            message = last.partition(": ")[2] or last
        super().__init__(message)


class BrokenEntry(Exception):
    """A cache file that cannot be used as it is: prepared again, or a :class:`CacheError`."""


def write_error(root: Path, err: OSError, broken: str | None = None) -> CacheError:
    """The one line for a cache folder that cannot be written (read-only, a file, full),
    after what is wrong with the entry that was to be prepared again (``broken``)."""
    what = err.strerror or type(err).__name__
    where = f" ({err.filename})" if err.filename else ""
    return CacheError(
        (f"{broken}, and cannot be prepared again: " if broken else "")
        + f"{KEY}={root}: cannot write the prepared data there: {what}{where}; set {KEY} "
        "to a writable folder with free space"
    )


def load(path: Path, mmap: bool = False) -> np.ndarray:
    """``np.load`` of a cache file.

    Raises:
        BrokenEntry: missing, unreadable or truncated (the file is named).
    """
    mode: Literal["r"] | None = "r" if mmap else None
    try:
        array: np.ndarray = np.load(path, mmap_mode=mode)
    except (FileNotFoundError, NotADirectoryError):
        raise BrokenEntry(f"{path} is missing") from None
    except (OSError, ValueError, EOFError) as err:
        raise BrokenEntry(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    return array


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """``(shape, dtype, size in bytes the file must have)`` from a ``.npy`` header alone.

    Raises:
        OSError, ValueError: not readable as a ``.npy`` file.
    """
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        offset = fh.tell()
    return tuple(shape), dtype, offset + math.prod(shape) * dtype.itemsize


def stamps(folder: Path) -> dict[str, dict[str, Any]]:
    """Size, modification time, dtype and shape of each array file of ``folder``."""
    out = {}
    for name in ARRAYS:
        stat = (folder / name).stat()
        shape, dtype, _ = npy_header(folder / name)
        out[name] = {
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "dtype": dtype.name,
            "shape": list(shape),
        }
    return out


def _structure(folder: Path, meta: dict[str, Any], image_dtype: str) -> bool:
    """Check each file's presence, header and size; True when one differs from its stamp.

    Raises:
        BrokenEntry: a missing, unreadable, truncated or retyped file, a wrong shape.
    """
    recorded = meta.get("files") or {}
    volume = tuple(int(s) for s in meta["shape"])
    stale = False
    for name, (dtype, full) in ARRAYS.items():
        path = folder / name
        try:
            stat = path.stat()
            shape, found, size = npy_header(path)
        except (FileNotFoundError, NotADirectoryError):
            raise BrokenEntry(f"{path} is missing") from None
        except (OSError, ValueError, EOFError) as err:
            raise BrokenEntry(f"{path} cannot be read ({type(err).__name__}: {err})") from None
        want = dtype or image_dtype
        if found.name != want:
            raise BrokenEntry(f"{path} holds {found.name} values, prepared as {want}")
        if (shape != volume) if full else (len(shape) != 2 or shape[1] != 3):
            raise BrokenEntry(
                f"{path} has shape {shape}, prepared as {volume if full else '(N, 3)'}"
            )
        if stat.st_size != size:
            raise BrokenEntry(
                f"{path} has {stat.st_size} bytes, its header needs {size} (truncated)"
            )
        stamp = recorded.get(name) or {}
        stale |= (stamp.get("bytes"), stamp.get("mtime_ns")) != (stat.st_size, stat.st_mtime_ns)
    return stale


def _contents(folder: Path, meta: dict[str, Any], num_classes: int | None) -> list[int]:
    """Check the voxels of an entry; returns its label values.

    Raises:
        BrokenEntry: label values outside the classes or not those prepared, NaN/Inf
            image voxels, foreground coordinates off the labels.
    """
    label = load(folder / "label.npy", mmap=True)
    values = [int(v) for v in np.flatnonzero(np.bincount(np.asarray(label).ravel(), minlength=1))]
    n = meta.get("num_classes") or num_classes
    if n and values and values[-1] >= n:
        raise BrokenEntry(
            f"{folder / 'label.npy'} holds label value {values[-1]}, outside the dataset's "
            f"{n} classes (0-{n - 1})"
        )
    if "label_values" in meta and values != list(meta["label_values"]):
        raise BrokenEntry(
            f"{folder / 'label.npy'} holds label values {values}, prepared with "
            f"{list(meta['label_values'])}"
        )
    if not np.isfinite(load(folder / "image.npy", mmap=True)).all():
        raise BrokenEntry(f"{folder / 'image.npy'} holds NaN or infinite values")
    fg = load(folder / "fg.npy").astype(np.int64)
    inside = ((fg >= 0) & (fg < np.asarray(label.shape))).all()
    if len(fg) and not (inside and (label[tuple(fg.T)] > 0).all()):
        raise BrokenEntry(f"{folder / 'fg.npy'} does not match {folder / 'label.npy'}")
    return values


def check(
    folder: Path, meta: dict[str, Any], image_dtype: str, num_classes: int | None
) -> dict[str, Any] | None:
    """Check a reused entry (cheaply, see the module's docstring).

    Args:
        meta: the entry's ``meta.json``.
        image_dtype: the dtype its image was prepared as.
        num_classes: its dataset's class count (used when ``meta`` records none).

    Returns:
        None when the files are as recorded; else the checked entry's new ``meta`` (the
        caller stores it, so the next run skips the voxel check).

    Raises:
        BrokenEntry: what is wrong with which file.
    """
    if not _structure(folder, meta, image_dtype):
        return None
    values = _contents(folder, meta, num_classes)
    return {
        **meta,
        "num_classes": meta.get("num_classes") or num_classes,
        "label_values": values,
        "files": stamps(folder),
    }


def discard(folder: Path) -> None:
    """Remove a broken entry: renamed out of the way first (atomic), then deleted."""
    aside = folder.with_name(f".{folder.name}.{os.getpid()}.{time.monotonic_ns()}.broken")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        return
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)

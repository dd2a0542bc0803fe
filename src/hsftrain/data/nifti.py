"""Reading and checking NIfTI (or any nibabel-readable) volumes, with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from hsftrain.core.atomic import atomic_path
from hsftrain.core.errors import UserError


class DataError(UserError, ValueError):
    """A data file that cannot be used; the message names the file and the fix."""


#: What to do with an unreadable training file (ends the error message).
DATASET_FIX = "re-export it or remove it from the dataset"


def _open_3d(path: Path, fix: str, error: type[Exception]) -> tuple[Any, tuple[int, ...]]:
    """Open an image file's header: ``(nibabel image, 3D shape)``, a trailing singleton
    4th dimension dropped.

    Raises:
        error: the file is missing, unreadable, or not 3D.
    """
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise _unreadable(path, err, fix, error) from err
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise error(
            f"{path}: has shape {shape}, expected a 3D volume; split 4D series "
            "(e.g. fslsplit) into one 3D image per file"
        )
    return img, shape


def _unreadable(path: Path, err: Exception, fix: str, error: type[Exception]) -> Exception:
    return error(
        f"{path}: cannot be read as a NIfTI/MGH image ({type(err).__name__}: {err}); {fix}"
    )


def read_image(
    path: str | Path,
    fix: str = DATASET_FIX,
    error: type[Exception] = DataError,
) -> tuple[Any, np.ndarray]:
    """Read a 3D image file: ``(nibabel image, data array)``.

    A trailing singleton 4th dimension is dropped from the data.

    Args:
        fix: what the user should do with an unreadable file (ends the error message).
        error: the exception class raised.

    Raises:
        error: the file is missing, unreadable/corrupt, or not 3D.
    """
    path = Path(path)
    img, shape = _open_3d(path, fix, error)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # a truncated or corrupt data block
        raise _unreadable(path, err, fix, error) from err
    return img, data.reshape(shape)


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 3D array in canonical RAS+ voxel order, by flips and axis permutations only (so
    the way back is exact).

    Args:
        data: ``(X, Y, Z)`` array on the grid of ``affine``.
        affine: its 4x4 voxel-to-world matrix.

    Returns:
        ``(array, ras_affine, to_native)``: the reoriented array (a view), its affine, and
        the nibabel orientation transform back to ``data``'s axes
        (``nibabel.orientations.apply_orientation(array, to_native)`` is ``data``).
    """
    affine = np.asarray(affine, dtype=np.float64)
    source = ornt.io_orientation(affine)
    ras = ornt.axcodes2ornt("RAS")
    to_ras = ornt.ornt_transform(source, ras)
    array = ornt.apply_orientation(data, to_ras)
    ras_affine = affine @ ornt.inv_ornt_aff(to_ras, data.shape)
    return array, ras_affine, ornt.ornt_transform(ras, source)


def canonical_zooms(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along the canonical RAS axes of an image with this ``affine``."""
    affine = np.asarray(affine, dtype=np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt.io_orientation(affine)):
        out[int(target)] = float(zooms[axis])
    return out[0], out[1], out[2]


def load_volume(
    path: str | Path, dtype: type | None = None, canonical: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D volume and its 4x4 affine (reoriented to RAS+ when ``canonical``, see
    :func:`to_canonical`).

    A trailing singleton 4th dimension is dropped.

    Raises:
        DataError: the file is missing, unreadable/corrupt, or not 3D.
    """
    img, data = read_image(path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if canonical:
        data, affine, _ = to_canonical(data, affine)
    if dtype is not None:
        data = data.astype(dtype)
    return data, affine


def check_pair(
    image_path: Path,
    label_path: Path,
    image_shape: tuple[int, ...],
    image_affine: np.ndarray,
    label_shape: tuple[int, ...],
    label_affine: np.ndarray,
    atol: float = 1e-3,
) -> None:
    """Check that a label map lies on its image's grid.

    Raises:
        DataError: shapes or affines differ.
    """
    if tuple(image_shape) != tuple(label_shape):
        raise DataError(
            f"{label_path}: label shape {tuple(label_shape)} does not match its image "
            f"{image_path} {tuple(image_shape)}; resample the label map onto the image grid "
            "(nearest neighbour) or fix the label glob"
        )
    if not np.allclose(image_affine, label_affine, atol=atol):
        raise DataError(
            f"{label_path}: affine does not match its image {image_path} "
            f"(max difference {np.abs(image_affine - label_affine).max():.4g}); the label map "
            "must be on the image grid: resample it, or copy the image header if only the "
            "header is wrong"
        )


def header_info(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape (3D) and affine from the header alone (the data is not read).

    Raises:
        DataError: missing, unreadable or not 3D.
    """
    img, shape = _open_3d(Path(path), DATASET_FIX, DataError)
    return shape, np.asarray(img.affine, dtype=np.float64)


def save_volume(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    codes: tuple[int, int] | None = None,
) -> Path:
    """Write a NIfTI file atomically (temporary file in the same folder, then rename).

    Args:
        codes: NIfTI ``(qform_code, sform_code)`` with ``affine`` as both qform and sform;
            ``None``: nibabel's defaults for a new image.
    """
    img = nib.Nifti1Image(data, affine)
    if codes is not None:
        img.set_qform(affine, code=int(codes[0]))
        img.set_sform(affine, code=int(codes[1]))
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)

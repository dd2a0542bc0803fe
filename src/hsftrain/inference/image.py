"""Reading MRIs into canonical (RAS) orientation and writing results back, atomically.

Only flips and axis permutations are used to go to and from RAS, so the way back is exact:
a result computed on the canonical grid lands on the input's own voxel grid (same shape,
same affine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from hsftrain.core.atomic import EXTENSIONS, atomic_path
from hsftrain.data.nifti import DataError, canonical_zooms, read_image, save_volume, to_canonical

__all__ = ["EXTENSIONS", "InputError", "Volume", "atomic_path", "load_volume", "save_nifti"]


class InputError(DataError):
    """An input MRI that cannot be segmented; the message names the file and the fix."""


def strip_extension(name: str) -> str:
    """File name without its image extension (``sub-01_T2w.nii.gz`` -> ``sub-01_T2w``)."""
    for ext in EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


@dataclass
class Volume:
    """A 3D MRI in canonical RAS voxel order, with what is needed to go back.

    Attributes:
        array: ``(X, Y, Z)`` float32 intensities, axes ordered R, A, S.
        affine: 4x4 voxel-to-world (RAS mm) matrix of ``array``.
        path: the file it was read from.
        native_affine: the input file's own affine.
        native_shape: the input file's own 3D shape.
        to_native: nibabel orientation transform from RAS back to the input's axes.
        codes: the input's NIfTI (qform_code, sform_code), reused for outputs on its grid.
        nonfinite_voxels: NaN/Inf voxels of the file, read as 0.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    native_affine: np.ndarray
    native_shape: tuple[int, int, int]
    to_native: np.ndarray
    codes: tuple[int, int] = (1, 1)
    nonfinite_voxels: int = 0

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the canonical axes."""
        return canonical_zooms(self.affine)

    @property
    def fov_mm(self) -> np.ndarray:
        """Field of view (mm) along the canonical axes."""
        return np.asarray(self.zooms) * np.asarray(self.array.shape)

    def native(self, array: np.ndarray) -> np.ndarray:
        """Map a canonical ``(X, Y, Z)`` array back to the input's voxel order (exact)."""
        return ornt.apply_orientation(array, self.to_native)


def load_volume(path: str | Path) -> Volume:
    """Read a 3D MRI (NIfTI, MGH/MGZ, ...) and reorient it to RAS.

    A trailing singleton 4th dimension is dropped; NaN/Inf voxels are read as 0 and
    counted (``Volume.nonfinite_voxels``).

    Raises:
        InputError: the file is missing, corrupt, not 3D, or has no finite intensity.
    """
    path = Path(path)
    img, data = read_image(path, "re-export it or exclude it with files.mask_pattern", InputError)
    data = np.asarray(data, dtype=np.float32)
    affine = np.asarray(img.affine, dtype=np.float64)
    codes = (1, 1)
    header = getattr(img, "header", None)
    if isinstance(header, nib.Nifti1Header):
        qform, sform = int(header["qform_code"]), int(header["sform_code"])
        codes = (qform or 1, sform or 1) if (qform or sform) else (1, 1)
    finite = np.isfinite(data)
    if not finite.any():
        raise InputError(f"{path}: contains no finite intensity")
    nonfinite = int(finite.size - np.count_nonzero(finite))
    if nonfinite:
        data = np.where(finite, data, np.float32(0.0))
    array, ras_affine, to_native = to_canonical(data, affine)
    return Volume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        affine=ras_affine,
        path=path,
        native_affine=affine,
        native_shape=tuple(int(s) for s in data.shape),  # type: ignore[arg-type]
        to_native=to_native,
        codes=codes,
        nonfinite_voxels=nonfinite,
    )


def save_nifti(
    array: np.ndarray, affine: np.ndarray, path: str | Path, codes: tuple[int, int] = (1, 1)
) -> Path:
    """Write ``array`` with ``affine`` as qform and sform (with ``codes``), atomically."""
    return save_volume(array, affine, path, codes)

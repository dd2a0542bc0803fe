"""hsftrain.data.nifti: reading, canonical orientation and writing of 3D volumes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as ornt

from hsftrain.data.nifti import (
    DataError,
    canonical_zooms,
    load_volume,
    save_volume,
    to_canonical,
)

#: Stored axes (A, S, L): voxel axis 0 runs anterior, 1 superior, 2 towards the left.
ASL = np.array([[0, 0, -2.0, 10], [1.0, 0, 0, -5], [0, 3.0, 0, 7], [0, 0, 0, 1]])


def test_canonical_zooms_follow_the_ras_axes() -> None:
    assert canonical_zooms(ASL) == (2.0, 1.0, 3.0)  # stored axes (A, S, L) -> R, A, S


def test_to_canonical_is_exact_and_reversible() -> None:
    data = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    array, affine, to_native = to_canonical(data, ASL)
    assert array.shape == (4, 2, 3)  # R (from L, flipped), A, S
    assert ornt.aff2axcodes(affine) == ("R", "A", "S")
    # the same world point for every voxel: affine @ canonical index == ASL @ stored index
    i, j, k = 1, 2, 3
    stored = ASL @ [i, j, k, 1]
    np.testing.assert_allclose(affine @ [3 - k, i, j, 1], stored)
    assert array[3 - k, i, j] == data[i, j, k]
    np.testing.assert_array_equal(ornt.apply_orientation(array, to_native), data)


def test_load_and_save_round_trip(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    path = save_volume(data, ASL, tmp_path / "v.nii.gz", codes=(1, 1))
    header = nib.load(str(path)).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1)
    native, affine = load_volume(path)
    np.testing.assert_array_equal(native, data)
    np.testing.assert_allclose(affine, ASL)
    canonical, ras = load_volume(path, np.float64, canonical=True)
    assert canonical.dtype == np.float64 and canonical.shape == (4, 2, 3)
    assert ornt.aff2axcodes(ras) == ("R", "A", "S")


def test_unreadable_and_4d_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.nii.gz: cannot be read"):
        load_volume(bad)
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), str(series))
    with pytest.raises(DataError, match="expected a 3D volume"):
        load_volume(series)

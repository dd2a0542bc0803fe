"""Reading MRIs into RAS and back onto the input grid; atomic writes; bad inputs."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.inference.image import (
    InputError,
    atomic_path,
    load_volume,
    save_nifti,
    strip_extension,
)

from .conftest import ORIENTATIONS


def test_strip_extension() -> None:
    assert strip_extension("sub-01_T2w.nii.gz") == "sub-01_T2w"
    assert strip_extension("a.b.nii") == "a.b"
    assert strip_extension("norm.mgz") == "norm"


@pytest.mark.parametrize(
    "axes",
    [
        np.diag([1.0, 1.0, 1.0]),
        np.diag([-1.0, 1.0, -1.0]),
        np.array([[0, 0, -1.0], [1, 0, 0], [0, -1, 0]]),
    ],
)
def test_canonical_round_trip_is_exact(tmp_path: Path, axes: np.ndarray) -> None:
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag([1.0, 1.5, 2.0])
    affine[:3, 3] = (10, -20, 30)
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    vol = load_volume(path)
    assert np.allclose(np.diag(vol.affine[:3, :3]) > 0, True)  # RAS
    np.testing.assert_array_equal(vol.native(vol.array), data)
    # the same world point has the same value in both grids
    ijk = np.array([1, 2, 3])
    world = affine[:3, :3] @ ijk + affine[:3, 3]
    ras_ijk = np.round(np.linalg.solve(vol.affine[:3, :3], world - vol.affine[:3, 3])).astype(int)
    assert vol.array[tuple(ras_ijk)] == data[tuple(ijk)]


@pytest.mark.skipif(not ORIENTATIONS.is_dir(), reason="shared orientation images missing")
def test_orientation_copies_share_one_canonical_image() -> None:
    vols = {p.stem.split(".")[0]: load_volume(p) for p in sorted(ORIENTATIONS.glob("*.nii.gz"))}
    ras = vols["RAS"]
    for name, vol in vols.items():
        np.testing.assert_allclose(vol.affine, ras.affine, atol=1e-3, err_msg=name)
        np.testing.assert_array_equal(vol.array, ras.array, err_msg=name)
        original = nib.load(str(vol.path))
        np.testing.assert_array_equal(
            vol.native(vol.array), np.asarray(original.dataobj, np.float32)
        )


def test_4d_and_corrupt_inputs_name_the_file(tmp_path: Path) -> None:
    four_d = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(four_d))
    with pytest.raises(InputError, match=r"series\.nii\.gz.*3D"):
        load_volume(four_d)
    single = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 1), np.float32), np.eye(4)), str(single))
    assert load_volume(single).array.shape == (4, 4, 4)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"\x00" * 100))
    with pytest.raises(InputError, match=r"corrupt\.nii\.gz"):
        load_volume(corrupt)
    truncated = tmp_path / "truncated.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-200])
    with pytest.raises(InputError, match=r"truncated\.nii\.gz"):
        load_volume(truncated)
    with pytest.raises(InputError, match="no such file"):
        load_volume(tmp_path / "absent.nii.gz")


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        assert tmp.name.endswith(".nii.gz") and ".hsftrain-tmp" in tmp.name
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_nifti_codes_are_kept_for_outputs(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.diag([-1.0, 1.0, 1.0, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=4)  # MNI
    nib.save(img, str(tmp_path / "mni.nii.gz"))
    vol = load_volume(tmp_path / "mni.nii.gz")
    assert vol.codes == (1, 4)
    out = save_nifti(vol.native(vol.array), vol.native_affine, tmp_path / "o.nii.gz", vol.codes)
    header = nib.load(str(out)).header
    assert int(header["sform_code"]) == 4 and int(header["qform_code"]) == 1

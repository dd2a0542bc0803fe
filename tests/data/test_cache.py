"""The prepared-data cache: contents, keys, reuse, refusal of bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.config.compose import compose
from hsftrain.data.cache import PrepareSettings, cache_dir, prepare
from hsftrain.data.discovery import discover
from hsftrain.data.nifti import DataError


def _found(folder: Path):
    cfg = compose("config", ["datasets=folder", f"datasets.path={folder}"])
    return discover(cfg.datasets)


def _folder(tmp_path: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(n):
        image = rng.normal(100, 20, (10, 12, 8)).astype(np.float32)
        label = np.zeros((10, 12, 8), np.uint8)
        label[3:7, 4:9, 2:6] = 1
        label[5:7, 4:6, 2:4] = 2
        affine = np.diag([1.0, 1.2, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), folder / f"sub-{i}_img.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / f"sub-{i}_lbl.nii.gz")
    return folder


def test_prepared_arrays_are_normalised_remapped_and_memory_mapped(tmp_path: Path) -> None:
    found = _found(_folder(tmp_path))
    prepared = prepare(found, tmp_path / "cache", progress=False)
    assert [p.id for p in prepared] == [s.id for s in found.subjects]
    image, label = prepared[0].arrays()
    assert isinstance(image, np.memmap) and image.dtype == np.float16
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2}
    assert abs(float(image.astype(np.float64).mean())) < 1e-2
    assert abs(float(image.astype(np.float64).std()) - 1) < 1e-2
    assert prepared[0].shape == (10, 12, 8)
    assert prepared[0].spacing == pytest.approx((1.0, 1.2, 2.0))
    assert prepared[0].minimum == pytest.approx(float(image.min()))
    fg = prepared[0].foreground()
    assert len(fg) == int((label > 0).sum()) and (label[tuple(fg.T)] > 0).all()


def test_entries_are_reused_and_a_changed_file_or_setting_is_prepared_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder(tmp_path)
    root = tmp_path / "cache"
    first = prepare(_found(folder), root, progress=False)
    again = prepare(_found(folder), root, progress=False)
    assert [p.folder for p in first] == [p.folder for p in again]
    # a changed image gets a new entry
    image = nib.load(folder / "sub-0_img.nii.gz")
    data = np.asanyarray(image.dataobj) * 2 + 5
    nib.save(nib.Nifti1Image(data, image.affine), folder / "sub-0_img.nii.gz")
    changed = prepare(_found(folder), root, progress=False)
    assert changed[0].folder != first[0].folder and changed[1].folder == first[1].folder
    # a changed setting too
    f32 = prepare(_found(folder), root, PrepareSettings(dtype="float32"), progress=False)
    assert f32[1].folder != first[1].folder and f32[1].arrays()[0].dtype == np.float32
    # nothing temporary is left behind
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_nonfinite_voxels_are_refused_with_the_file_named_or_cleaned(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    path = folder / "sub-1_img.nii.gz"
    image = nib.load(path)
    data = np.asanyarray(image.dataobj).copy()
    data[0, 0, 0], data[1, 1, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(data, image.affine), path)
    root = tmp_path / "cache"
    with pytest.raises(DataError, match=r"sub-1_img.nii.gz: 2 voxel\(s\) are NaN or infinite"):
        prepare(_found(folder), root, progress=False)
    cleaned = prepare(_found(folder), root, PrepareSettings(nonfinite="clean"), progress=False)
    assert np.isfinite(cleaned[1].arrays()[0]).all()


def test_a_truncated_file_fails_at_preparation(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    path = folder / "sub-2_img.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    found = _found(folder)  # the header still reads
    with pytest.raises(DataError, match="sub-2_img.nii.gz: cannot be read"):
        prepare(found, tmp_path / "cache", progress=False)


def test_settings_and_cache_dir_from_config(tmp_path: Path) -> None:
    cfg = compose("config", [f"datasets.output_path={tmp_path}"])
    assert cache_dir(cfg.datasets) == tmp_path / "prepared"
    cfg = compose("config", [f"datasets.cache_dir={tmp_path / 'c'}"])
    assert cache_dir(cfg.datasets) == tmp_path / "c"
    with pytest.raises(DataError, match="datasets.cache_dtype"):
        PrepareSettings.from_config({"cache_dtype": "int8"})
    with pytest.raises(DataError, match="datasets.nonfinite"):
        PrepareSettings.from_config({"nonfinite": "ignore"})

"""The prepared-data cache checks what it reuses: each entry against the manifest recorded
when it was prepared, at the start of a run and where a file is opened during it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from torch.utils.data import DataLoader

from hsftrain.data import manifest
from hsftrain.data.cache import CacheError, PreparedSubject, prepare
from hsftrain.data.dataset import PatchDataset
from hsftrain.data.voxel_sizes import describe, is_mixed, mixed_warning, size_counts
from tests.data.test_cache import _folder, _found


@pytest.fixture
def cached(tmp_path: Path) -> tuple[Path, Path, list[PreparedSubject]]:
    """(data folder, cache root, prepared subjects)."""
    folder = _folder(tmp_path)
    root = tmp_path / "cache"
    return folder, root, prepare(_found(folder), root, progress=False)


def _again(folder: Path, root: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Prepare again; the warnings logged."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hsftrain"):
        prepare(_found(folder), root, progress=False)
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_the_manifest_records_each_file_and_the_label_range(cached) -> None:
    _, _, prepared = cached
    meta = prepared[0].meta()
    assert meta["num_classes"] == 3 and meta["label_values"] == [0, 1, 2]
    image = meta["files"]["image.npy"]
    assert image["dtype"] == "float16" and image["shape"] == [10, 12, 8]
    assert image["bytes"] == (prepared[0].folder / "image.npy").stat().st_size
    assert prepared[0].num_classes == 3


def test_an_untouched_entry_is_reused_without_reading_its_voxels(
    cached, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, root, prepared = cached

    def no_voxels(*args: object) -> None:
        raise AssertionError("voxels read for an untouched entry")

    monkeypatch.setattr(manifest, "_contents", no_voxels)
    assert _again(folder, root, caplog) == []


def test_a_label_file_overwritten_with_out_of_range_values_is_prepared_again(
    cached, caplog: pytest.LogCaptureFixture
) -> None:
    folder, root, prepared = cached
    path = prepared[1].folder / "label.npy"
    label = np.load(path)
    label[label == 2] = 9  # same size, dtype and shape: only the values say it
    np.save(path, label)
    warnings = _again(folder, root, caplog)
    assert len(warnings) == 1
    assert "prepared again 1 broken entry" in warnings[0]
    assert f"{path} holds label value 9, outside the dataset's 3 classes (0-2)" in warnings[0]
    assert "datasets.cache_dir" in warnings[0]
    assert set(np.unique(np.load(path))) == {0, 1, 2}
    assert _again(folder, root, caplog) == []  # repaired for good


def test_labels_swapped_in_range_and_nan_images_are_prepared_again(
    cached, caplog: pytest.LogCaptureFixture
) -> None:
    folder, root, prepared = cached
    label_path = prepared[0].folder / "label.npy"
    np.save(label_path, np.where(np.load(label_path) > 0, 1, 0).astype(np.uint8))
    image_path = prepared[2].folder / "image.npy"
    image = np.load(image_path)
    image[0, 0, 0] = np.nan
    np.save(image_path, image)
    (warning,) = _again(folder, root, caplog)
    assert "2 broken entries" in warning
    assert "label values [0, 1], prepared with [0, 1, 2]" in warning
    assert f"{image_path} holds NaN or infinite values" in warning


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("truncate", "(truncated)"),
        ("delete", "fg.npy is missing"),
        ("meta", "meta.json cannot be read"),
        ("retype", "holds float32 values, prepared as float16"),
    ],
)
def test_truncated_missing_or_retyped_files_are_prepared_again(
    cached, caplog: pytest.LogCaptureFixture, damage: str, words: str
) -> None:
    folder, root, prepared = cached
    entry = prepared[0].folder
    if damage == "truncate":
        raw = (entry / "image.npy").read_bytes()
        (entry / "image.npy").write_bytes(raw[: len(raw) // 2])
    elif damage == "delete":
        (entry / "fg.npy").unlink()
    elif damage == "meta":
        (entry / "meta.json").write_text("{not json")
    else:
        np.save(entry / "image.npy", np.load(entry / "image.npy").astype(np.float32))
    (warning,) = _again(folder, root, caplog)
    assert words in warning and str(entry) in warning
    image, label = prepare(_found(folder), root, progress=False)[0].arrays(mmap=False)
    assert image.dtype == np.float16 and image.shape == label.shape == (10, 12, 8)


def test_a_copied_cache_is_checked_once_and_an_old_entry_gets_its_manifest(
    cached, caplog: pytest.LogCaptureFixture
) -> None:
    folder, root, prepared = cached
    for p in prepared:
        os.utime(p.folder / "image.npy", ns=(1, 1))  # what `cp -r` does to every file
    meta = json.loads((prepared[1].folder / "meta.json").read_text())
    for key in ("files", "num_classes", "label_values"):  # as an earlier version wrote it
        del meta[key]
    (prepared[1].folder / "meta.json").write_text(json.dumps(meta))
    assert _again(folder, root, caplog) == []  # checked voxel by voxel: nothing rebuilt
    meta = json.loads((prepared[1].folder / "meta.json").read_text())
    assert meta["label_values"] == [0, 1, 2] and meta["num_classes"] == 3
    stamp = json.loads((prepared[0].folder / "meta.json").read_text())["files"]["image.npy"]
    assert stamp["mtime_ns"] == 1  # recorded: the next run reads no voxel


def test_an_entry_deleted_during_the_run_is_prepared_again_where_it_is_opened(
    cached, caplog: pytest.LogCaptureFixture
) -> None:
    _, root, prepared = cached
    shutil.rmtree(root)  # the whole cache, while a run holds its subjects
    with caplog.at_level(logging.WARNING, logger="hsftrain"):
        item = PatchDataset(prepared, (8, 8, 8))[0]
    assert item["image"].shape == (1, 8, 8, 8)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{prepared[0].folder / 'image.npy'} is missing" in warning
    assert "datasets.cache_dir" in warning and "prepared" in warning
    assert (prepared[0].folder / "meta.json").is_file()


def test_whole_volumes_opened_during_the_run_have_their_labels_checked(cached) -> None:
    _, _, prepared = cached
    path = prepared[2].folder / "label.npy"
    np.save(path, np.full((10, 12, 8), 7, np.uint8))
    _, label = prepared[2].arrays(mmap=False)
    assert int(label.max()) == 2


def test_an_entry_that_cannot_be_prepared_again_is_refused_with_one_line(cached) -> None:
    folder, _, prepared = cached
    shutil.rmtree(prepared[0].folder)
    (folder / "sub-0_img.nii.gz").unlink()  # its source gone too
    with pytest.raises(CacheError) as info:
        prepared[0].arrays()
    message = str(info.value)
    assert f"{prepared[0].folder / 'image.npy'} is missing" in message
    assert "datasets.cache_dir=" in message and "sub-0_img.nii.gz" in message
    # a changed source is not prepared into the old entry
    shutil.rmtree(prepared[1].folder)
    image = nib.load(folder / "sub-1_img.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj) + 1, image.affine), image.get_filename())
    with pytest.raises(CacheError, match="changed since the run started"):
        prepared[1].foreground()
    assert not prepared[1].folder.exists()


def test_a_worker_process_error_reaches_the_user_as_its_one_line(cached) -> None:
    folder, _, prepared = cached
    shutil.rmtree(prepared[0].folder)
    (folder / "sub-0_img.nii.gz").unlink()
    batches = iter(DataLoader(PatchDataset(prepared[:1], (8, 8, 8)), num_workers=1))
    with pytest.raises(CacheError) as info:
        next(batches)
    del batches  # its worker process ends here
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(prepared[0].folder))
    assert "datasets.cache_dir" in message


def test_a_cache_folder_that_cannot_be_written_names_the_key(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CacheError, match=r"^datasets.cache_dir=.*file/cache: cannot write"):
        prepare(_found(folder), blocker / "cache", progress=False)


def test_voxel_sizes_are_counted_and_mixed_ones_named() -> None:
    sizes = [(1, 1, 1)] * 12 + [(2, 2, 2)] * 3 + [(1.0001, 1, 1)]
    assert size_counts(sizes) == [((1.0, 1.0, 1.0), 13), ((2.0, 2.0, 2.0), 3)]
    assert describe(size_counts(sizes)) == "13 images at 1x1x1 mm, 3 at 2x2x2 mm"
    assert is_mixed(sizes) and not is_mixed([(1, 1, 1), (0.94, 0.94, 1.1)])
    assert mixed_warning([(1, 1, 1)] * 3, "x") is None
    many = [(1 + i / 10, 1, 1) for i in range(8)]
    assert describe(size_counts(many), limit=2).endswith("6 at 6 other sizes")


def test_a_cache_folder_gone_unwritable_during_the_run_names_the_file_and_the_key(
    cached,
) -> None:
    _, root, prepared = cached
    shutil.rmtree(root)
    root.write_text("")  # the cache folder replaced by a file: nothing can be written there
    with pytest.raises(CacheError) as info:
        prepared[0].arrays()
    message = str(info.value)
    assert message.startswith(f"{prepared[0].folder / 'image.npy'} is missing")
    assert f"datasets.cache_dir={root}: cannot write the prepared data there" in message

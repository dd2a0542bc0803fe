import logging

import nibabel as nib
import numpy as np
import pytest

from hsftrain.data.discovery import discover, read_label
from hsftrain.data.nifti import DataError, load_volume


def _cfg(root, labels=None, names=None, mri="*_img.nii.gz", label="{id}_lbl.nii.gz"):
    return {
        "main_path": str(root),
        "datasets": {
            "d": {
                "path": ".",
                "ca_type": "1/2/3",
                "patterns": {"p": {"mri": mri, "label": label}},
                "labels": labels,
                "labels_names": names,
            }
        },
    }


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def _pair(root, sid, label_values=(1, 2), shape=(8, 8, 8), label_shape=None, affine=None):
    _write(root / f"{sid}_img.nii.gz", np.random.default_rng(0).random(shape).astype(np.float32))
    lbl = np.zeros(label_shape or shape, np.uint8)
    for i, v in enumerate(label_values):
        lbl[i, 0, 0] = v
    _write(root / f"{sid}_lbl.nii.gz", lbl, affine)


def test_discovers_pairs_and_remaps(tmp_path):
    for sid in ("a", "b"):
        _pair(tmp_path, sid, (1, 4))
    found = discover(_cfg(tmp_path, {1: 1, 4: 2}, {1: "DG", 2: "CA1"}))
    assert [s.id for s in found.subjects] == ["d/p/a_img.nii.gz", "d/p/b_img.nii.gz"]
    assert found.dataset_classes[0] == ["background", "DG", "CA1"]
    remapped = read_label(found.datasets[0], found.subjects[0].label)
    assert sorted(np.unique(remapped)) == [0, 1, 2]


def test_a_map_lacking_a_class_is_used_and_named_once(tmp_path, caplog):
    _pair(tmp_path, "full", (1, 2))
    _pair(tmp_path, "partial", (1,))
    _pair(tmp_path, "empty", ())
    with caplog.at_level(logging.WARNING):
        found = discover(_cfg(tmp_path, {1: 1, 2: 2}, {1: "DG", 2: "CA1"}))
    assert [s.id for s in found.subjects] == ["d/p/full_img.nii.gz", "d/p/partial_img.nii.gz"]
    lacking = [r.getMessage() for r in caplog.records if "have no CA1" in r.getMessage()]
    assert lacking == [
        "dataset d: 1 of 3 label maps have no CA1 (partial_lbl.nii.gz); they are used: "
        "training forgives a CA1 predicted in them (with models.use_forgiving_loss=false it "
        "trains CA1 as background there)"
    ]
    assert found.subjects[1].lacking == (2,) and found.subjects[1].table == 1
    assert "[" not in lacking[0]  # no label arrays
    assert [p.name for p, _ in found.skipped] == ["empty_lbl.nii.gz"]


def test_folder_without_tables_reads_values(tmp_path):
    _pair(tmp_path, "a", (1, 3))
    found = discover(_cfg(tmp_path))
    assert found.dataset_classes[0] == ["background", "label_1", "label_2", "label_3"]


def test_empty_glob_names_pattern(tmp_path):
    with pytest.raises(DataError, match=r"no image matches .*\*_img.nii.gz"):
        discover(_cfg(tmp_path))


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(_cfg(tmp_path / "nope"))


def test_values_missing_from_mapping(tmp_path):
    _pair(tmp_path, "a", (1, 9))
    with pytest.raises(DataError, match=r"\[9\] in .*a_lbl.nii.gz.*datasets.datasets.d.labels"):
        discover(_cfg(tmp_path, {1: 1}, {1: "DG"}))


def test_label_shape_mismatch(tmp_path):
    _pair(tmp_path, "a", shape=(8, 8, 8), label_shape=(8, 8, 9))
    with pytest.raises(DataError, match=r"a_lbl.nii.gz: label shape .*resample"):
        discover(_cfg(tmp_path))


def test_label_affine_mismatch(tmp_path):
    _pair(tmp_path, "a", affine=np.diag([2.0, 1, 1, 1]))
    with pytest.raises(DataError, match=r"a_lbl.nii.gz: affine does not match"):
        discover(_cfg(tmp_path))


def test_missing_label_file(tmp_path):
    _pair(tmp_path, "a")
    (tmp_path / "a_lbl.nii.gz").unlink()
    with pytest.raises(DataError, match=r"a_img.nii.gz: no label match"):
        discover(_cfg(tmp_path))


def test_corrupt_and_4d_files(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(DataError, match="bad.nii.gz: cannot be read"):
        load_volume(bad)
    four = tmp_path / "four.nii.gz"
    _write(four, np.zeros((4, 4, 4, 3), np.float32))
    with pytest.raises(DataError, match=r"four.nii.gz: has shape \(4, 4, 4, 3\).*3D"):
        load_volume(four)
    single = tmp_path / "single.nii.gz"
    _write(single, np.zeros((4, 4, 4, 1), np.float32))
    assert load_volume(single)[0].shape == (4, 4, 4)


def test_real_sample_discovered(sample_dir):
    from hsftrain.config.compose import compose

    cfg = compose("config", ["datasets=sample"])
    found = discover(cfg.datasets)
    assert len(found.subjects) == 48
    assert found.dataset_classes[0] == ["background", "anterior", "posterior"]

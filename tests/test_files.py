"""hsftrain.files: atomic writes (nothing half-written, normal permissions)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from hsftrain.data.nifti import load_volume, save_volume
from hsftrain.files import atomic_path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_get_the_umask_permissions_not_0600(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = save_volume(np.zeros((2, 3, 4), np.uint8), np.eye(4), tmp_path / "seg.nii.gz")
        os.umask(0o002)
        with atomic_path(tmp_path / "volumes.csv") as tmp:
            tmp.write_text("subject,volume\n")
    finally:
        os.umask(previous)
    assert _mode(path) == 0o644
    assert _mode(tmp_path / "volumes.csv") == 0o664
    assert load_volume(path)[0].shape == (2, 3, 4)


def test_replacing_a_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"
    save_volume(np.zeros((2, 2, 2), np.uint8), np.eye(4), target)
    target.chmod(0o640)
    save_volume(np.ones((2, 2, 2), np.uint8), np.eye(4), target)
    assert _mode(target) == 0o640
    assert load_volume(target)[0].max() == 1


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"
    save_volume(np.zeros((2, 2, 2), np.uint8), np.eye(4), target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]

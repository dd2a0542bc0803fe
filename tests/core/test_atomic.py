"""hsftrain.core.atomic: atomic writes (nothing half-written, normal permissions)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from hsftrain.core.atomic import atomic_path, write_text_atomic
from hsftrain.data.nifti import load_volume, save_volume


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


def test_a_text_file_cut_while_rewritten_keeps_its_previous_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's config.yaml is rewritten during training (budget= pacing): a failure
    half-way must leave the previous file whole, and no temporary file."""
    path = write_text_atomic(tmp_path / "config.yaml", "epochs: 40\n")
    real = Path.write_text

    def cut(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real(self, text[:3])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", cut)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "epochs: 44\n")
    monkeypatch.undo()
    assert path.read_text() == "epochs: 40\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]

"""Writing files safely: a temporary file beside the target, renamed onto it when complete.

Light on purpose (standard library only): used by data, export, hub, inference and
evaluation alike.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Image extensions (longest first), for deriving stems and temporary names.
EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".mgz", ".mgh", ".img", ".hdr")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary name keeps the final extension (writers infer the format from it) and
    contains ``.hsftrain-tmp``; it is removed if writing fails. A run killed with SIGKILL
    can leave one such file behind, never a half-written ``path``. The result gets the
    permissions of the file it replaces, or those of a newly created file (0666 less the
    umask), not the owner-only mode of temporary files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = next((e for e in EXTENSIONS if path.name.lower().endswith(e)), path.suffix)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".hsftrain-tmp{ext}", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``Path(path).write_text(text)`` through :func:`atomic_path`: a kill while writing
    leaves the previous file (e.g. a run's ``config.yaml`` rewritten during training)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _file_mode(path: Path) -> int:
    """Permission bits for ``path``: its current ones, else 0666 less the process umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask

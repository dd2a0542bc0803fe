"""Which images an int8 model is calibrated on (and the training voxel size measured
from): the run's own training subjects, or a folder / glob of NIfTI images.

The run directory of a checkpoint holds ``split.json`` (training subject ids, see
:func:`hsftrain.data.subjects.parse_subject_id`) and the checkpoint stores the run's
``datasets`` config, which says where each dataset lies.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.core.errors import ConfigError
from hsftrain.data.subjects import parse_subject_id


def run_training_images(ckpt: str | Path, config: Mapping[str, Any]) -> list[Path]:
    """Images of the training subjects of the run that wrote ``ckpt``.

    The run directory is the checkpoint's ``checkpoints/`` parent; its ``split.json`` lists
    the training subject ids (:func:`~hsftrain.data.subjects.subject_id`) and the
    checkpoint's stored ``datasets`` config says where each dataset lies.

    Raises:
        ConfigError: no split.json, no datasets config, or images that no longer exist
            (the message says to set ``calibration.path``).
    """
    ckpt = Path(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    split_file = run_dir / "split.json"
    hint = "set calibration.path=DIR (and calibration.pattern) to calibrate on other images"
    if not split_file.is_file():
        raise ConfigError(f"no {split_file} next to {ckpt}: {hint}")
    datasets = (config or {}).get("datasets") or {}
    entries = datasets.get("datasets") or {}
    if not entries:
        raise ConfigError(f"{ckpt} stores no datasets config: {hint}")
    main_path = Path(str(datasets.get("main_path") or ".")).expanduser()
    roots = {
        str(name): main_path / str(entry.get("path") or ".") for name, entry in entries.items()
    }
    ids = json.loads(split_file.read_text()).get("train", [])
    images: list[Path] = []
    for sid in dict.fromkeys(ids):  # bagging may repeat subjects
        name, _, relpath = parse_subject_id(sid)
        if name not in roots or not relpath:
            raise ConfigError(
                f"{split_file}: subject id {sid!r} matches no dataset of {ckpt}: {hint}"
            )
        images.append(roots[name] / relpath)
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} training images of {run_dir} are missing (first: {missing[0]}): {hint}"
        )
    return images


def glob_images(path: str | Path, pattern: str = "*.nii.gz") -> list[Path]:
    """Sorted images of a folder (``pattern`` inside it) or of a glob.

    Raises:
        ConfigError: nothing matches.
    """
    path = Path(str(path)).expanduser()
    spec = str(path / pattern) if path.is_dir() else str(path)
    found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not found:
        raise ConfigError(
            f"calibration.path={path}, calibration.pattern={pattern!r}: no image matches {spec}"
        )
    return found


def pick(items: Sequence[Path], n: int) -> list[Path]:
    """``n`` items evenly spaced over ``items`` (all of them when there are fewer)."""
    if n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in dict.fromkeys(idx.tolist())]

"""Dataset discovery: config globs -> checked (image, label) subject pairs."""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.data.duplicates import find_duplicates
from hsftrain.data.labels import LabelError, class_names, remap_labels
from hsftrain.data.nifti import DataError, check_pair, header_info, load_volume
from hsftrain.data.subjects import DatasetSpec, Discovery, Subject, id_stem, subject_id

__all__ = ["DatasetSpec", "Discovery", "Subject", "discover", "find_pairs", "id_stem", "read_label"]

log = logging.getLogger(__name__)


def _label_for(mri: Path, mri_pattern: str, label_pattern: str) -> list[Path]:
    """Label files next to ``mri`` matching ``label_pattern`` (``{id}`` = :func:`id_stem`)."""
    if "{id}" in label_pattern:
        label_pattern = label_pattern.replace("{id}", glob.escape(id_stem(mri, mri_pattern)))
    matches = sorted(Path(p) for p in glob.glob(str(mri.parent / label_pattern), recursive=True))
    return [m for m in matches if m.resolve() != mri.resolve()]


def find_pairs(spec: DatasetSpec) -> list[tuple[str, Path, Path]]:
    """(subject id, image, label) for every MRI matching the dataset's patterns.

    Raises:
        DataError: the dataset folder is missing or no pattern matches any file.
    """
    if not spec.root.is_dir():
        raise DataError(
            f"dataset {spec.name!r}: folder {spec.root} does not exist; set "
            f"datasets.main_path / datasets.datasets.{spec.name}.path"
        )
    pairs: list[tuple[str, Path, Path]] = []
    for pname, (mri_glob, label_glob) in spec.patterns.items():
        mris = sorted(Path(p) for p in glob.glob(str(spec.root / mri_glob), recursive=True))
        if not mris:
            log.warning(
                "dataset %s, pattern %s: no file matches %s", spec.name, pname, spec.root / mri_glob
            )
        for mri in mris:
            labels = _label_for(mri, mri_glob, label_glob)
            if len(labels) != 1:
                what = (
                    "no label"
                    if not labels
                    else f"{len(labels)} labels ({', '.join(map(str, labels))})"
                )
                raise DataError(
                    f"{mri}: {what} match {label_glob!r} in its folder; fix "
                    f"datasets.datasets.{spec.name}.patterns.{pname}.label so that exactly one "
                    "label map matches each MRI"
                )
            sid = subject_id(spec.name, pname, mri.relative_to(spec.root))
            pairs.append((sid, mri, labels[0]))
    if not pairs:
        globs = ", ".join(str(spec.root / m) for m, _ in spec.patterns.values())
        raise DataError(
            f"dataset {spec.name!r}: no image matches {globs}; check datasets.main_path, "
            f"the dataset's `path` and its `patterns`"
        )
    return pairs


def read_label(spec: DatasetSpec, path: Path, canonical: bool = False) -> np.ndarray:
    """Load a label map and remap it with the dataset's ``labels`` table.

    Raises:
        DataError: unreadable file, or values missing from the table.
    """
    data, _ = load_volume(path, canonical=canonical)
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.allclose(rounded, data, atol=1e-3):
            raise DataError(f"{path}: label map has non-integer values; is it an image?")
        data = rounded
    data = data.astype(np.int64)
    if data.min(initial=0) < 0:
        raise DataError(f"{path}: label map has negative values")
    if spec.labels is None:
        return data
    try:
        return remap_labels(data, spec.labels, source=str(path))
    except LabelError as err:
        raise DataError(f"{err} (datasets.datasets.{spec.name}.labels)") from err


def discover(datasets_cfg: Mapping[str, Any]) -> Discovery:
    """Discover and check every subject of the ``datasets`` config group.

    Each pair is checked (3D, label on the image grid, label values in the mapping).
    Subjects whose remapped label set differs from the dataset's ``labels_names`` are
    skipped with a log line naming the file.

    Raises:
        DataError: missing folders, empty globs, bad files, or no usable subject.
    """
    main_path = Path(str(datasets_cfg.get("main_path") or ".")).expanduser()
    entries = datasets_cfg.get("datasets") or {}
    if not entries:
        raise DataError("`datasets.datasets` is empty: describe at least one dataset")
    specs = [
        DatasetSpec.from_config(str(name), i, main_path, entry)
        for i, (name, entry) in enumerate(entries.items())
    ]
    result = Discovery(datasets=specs, subjects=[])
    for spec in specs:
        found: list[tuple[Subject, set[int]]] = []
        for sid, image, label in find_pairs(spec):
            ishape, iaff = header_info(image)
            lshape, laff = header_info(label)
            check_pair(image, label, ishape, iaff, lshape, laff)
            values = {int(v) for v in np.unique(read_label(spec, label))}
            found.append((Subject(sid, image, label, spec.index), values))
        if spec.labels_names is not None:
            expected = {0, *spec.labels_names}
            for subject, values in found:
                if values != expected:
                    reason = (
                        f"remapped labels {sorted(values)} differ from labels_names "
                        f"{sorted(expected)} of dataset {spec.name}"
                    )
                    log.warning("skipping %s: %s", subject.label, reason)
                    result.skipped.append((subject.label, reason))
                else:
                    result.subjects.append(subject)
            names = spec.labels_names
        else:
            result.subjects.extend(s for s, _ in found)
            seen = sorted(set().union(*(v for _, v in found)) - {0})
            names = {v: f"label_{v}" for v in seen}
        result.dataset_classes[spec.index] = class_names(names)
    if not result.subjects:
        raise DataError(
            f"no usable subject: {len(result.skipped)} skipped (see the log lines above); "
            "fix the datasets' `labels` / `labels_names`"
        )
    log.info(
        "found %d subjects in %d dataset(s) (%d skipped)",
        len(result.subjects),
        len(specs),
        len(result.skipped),
    )
    result.groups = find_duplicates(result.subjects, specs)
    return result

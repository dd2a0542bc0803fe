"""Dataset discovery: config globs -> checked (image, label) subject pairs."""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.data.labels import CA_TYPES, LabelError, class_names, remap_labels
from hsftrain.data.nifti import DataError, check_pair, header_info, load_volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of ``datasets.datasets`` in the config."""

    name: str
    index: int
    root: Path
    ca_type: str
    patterns: dict[str, tuple[str, str]]
    labels: dict[int, int] | None
    labels_names: dict[int, str] | None

    @classmethod
    def from_config(
        cls, name: str, index: int, main_path: Path, cfg: Mapping[str, Any]
    ) -> DatasetSpec:
        """Build from a config mapping.

        Raises:
            DataError: missing or malformed keys (named).
        """
        key = f"datasets.datasets.{name}"
        patterns = cfg.get("patterns") or {}
        if not patterns:
            raise DataError(f"`{key}.patterns` is empty: give {{name: {{mri: glob, label: glob}}}}")
        parsed = {}
        for pname, pattern in patterns.items():
            if not pattern or "mri" not in pattern or "label" not in pattern:
                raise DataError(f"`{key}.patterns.{pname}` needs both `mri` and `label` globs")
            parsed[str(pname)] = (str(pattern["mri"]), str(pattern["label"]))
        ca_type = str(cfg.get("ca_type") or "1/2/3")
        if ca_type not in CA_TYPES:
            raise DataError(f"`{key}.ca_type`={ca_type!r}: use one of {', '.join(CA_TYPES)}")
        labels = cfg.get("labels")
        names = cfg.get("labels_names")
        return cls(
            name=name,
            index=index,
            root=(main_path / str(cfg.get("path") or ".")).expanduser(),
            ca_type=ca_type,
            patterns=parsed,
            labels={int(k): int(v) for k, v in labels.items()} if labels else None,
            labels_names={int(k): str(v) for k, v in names.items()} if names else None,
        )


@dataclass(frozen=True)
class Subject:
    """One training example: an image, its label map and the dataset it belongs to."""

    id: str
    image: Path
    label: Path
    dataset: int


@dataclass
class Discovery:
    """Everything discovered: datasets, usable subjects, skipped files and class names."""

    datasets: list[DatasetSpec]
    subjects: list[Subject]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    dataset_classes: dict[int, list[str]] = field(default_factory=dict)
    #: subject indices to keep on one side of a split (the same subject found twice:
    #: same name or same image content; see :mod:`hsftrain.data.duplicates`)
    groups: list[list[int]] = field(default_factory=list)


def id_stem(mri: Path, mri_pattern: str) -> str:
    """The subject part of an MRI's name: the name minus the fixed suffix of its pattern
    (``sub-01`` for ``sub-01_img.nii.gz`` and ``*_img.nii.gz``), or minus its extension."""
    name = Path(mri_pattern).name
    suffix = name.rsplit("*", 1)[-1] if "*" in name else ""
    stem = mri.name[: len(mri.name) - len(suffix)] if suffix else mri.name
    for ext in (".nii.gz", ".nii", ".mgz"):
        if not suffix and stem.endswith(ext):
            stem = stem[: -len(ext)]
    return stem


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
            sid = f"{spec.name}/{pname}/{mri.relative_to(spec.root)}"
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
    from hsftrain.data.duplicates import find_duplicates

    result.groups = find_duplicates(result.subjects, specs)
    return result

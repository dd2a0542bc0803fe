"""Datasets and subjects as discovery finds them, and the subject id format.

A subject id is ``<dataset>/<pattern>/<path of the MRI in the dataset folder>``
(:func:`subject_id`): unique within a run, stable across machines (no absolute path), and
what ``split.json`` lists. :func:`parse_subject_id` is its inverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePath
from typing import Any

from hsftrain.data.labels import CA_TYPES
from hsftrain.data.nifti import DataError


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
    #: crop each subject to its labels grown by this many mm (None: whole images)
    crop_margin_mm: float | None = None

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
        margin = cfg.get("crop_margin_mm")
        if margin is not None:
            try:
                margin = float(margin)
            except (TypeError, ValueError):
                margin = -1.0
            if isinstance(cfg.get("crop_margin_mm"), bool) or not margin >= 0:
                raise DataError(
                    f"`{key}.crop_margin_mm`={cfg.get('crop_margin_mm')!r}: give the mm kept "
                    "around each subject's labels (e.g. 10), or null for whole images"
                )
        return cls(
            name=name,
            index=index,
            root=(main_path / str(cfg.get("path") or ".")).expanduser(),
            ca_type=ca_type,
            patterns=parsed,
            labels={int(k): int(v) for k, v in labels.items()} if labels else None,
            labels_names={int(k): str(v) for k, v in names.items()} if names else None,
            crop_margin_mm=margin,
        )


@dataclass(frozen=True)
class Subject:
    """One training example: an image, its label map and the dataset it belongs to."""

    id: str
    image: Path
    label: Path
    dataset: int
    #: label values of the dataset's ``labels_names`` that this label map does not hold
    lacking: tuple[int, ...] = ()
    #: index of the loss table of this subject (:attr:`Discovery.lacking_tables`) when its
    #: map lacks classes; None: its dataset's table (index ``dataset``)
    table: int | None = None


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
    #: loss tables of the subjects whose maps lack some of their dataset's classes: ``{table
    #: index: (dataset index, lacking label values)}``, one per distinct pair, numbered after
    #: the datasets (see :func:`assign_tables`)
    lacking_tables: dict[int, tuple[int, tuple[int, ...]]] = field(default_factory=dict)


def assign_tables(found: Discovery) -> None:
    """Give each subject whose map lacks classes the loss table of its (dataset, lacking
    classes) pair: indices after the datasets' own, in the order of the pairs; sets
    :attr:`Discovery.lacking_tables` and :attr:`Subject.table` (in place)."""
    first = max((s.index for s in found.datasets), default=-1) + 1
    pairs = sorted({(s.dataset, s.lacking) for s in found.subjects if s.lacking})
    index = {pair: first + i for i, pair in enumerate(pairs)}
    found.lacking_tables = {t: pair for pair, t in index.items()}
    found.subjects = [
        replace(s, table=index[(s.dataset, s.lacking)]) if s.lacking else s for s in found.subjects
    ]


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


def subject_id(dataset: str, pattern: str, relpath: str | PurePath) -> str:
    """The id of the subject whose MRI is ``relpath`` (relative to the dataset folder),
    found by the dataset's pattern ``pattern``."""
    return f"{dataset}/{pattern}/{PurePath(relpath).as_posix()}"


def parse_subject_id(sid: str) -> tuple[str, str, str]:
    """``(dataset, pattern, relpath)`` of a :func:`subject_id` (empty parts when ``sid``
    has fewer than three)."""
    dataset, _, rest = sid.partition("/")
    pattern, _, relpath = rest.partition("/")
    return dataset, pattern, relpath

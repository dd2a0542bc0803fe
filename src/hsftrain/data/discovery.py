"""Dataset discovery: config globs -> checked (image, label) subject pairs."""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.data.duplicates import find_duplicates
from hsftrain.data.labels import (
    class_names,
    describe_counts,
    remap_labels,
    stray_values,
    value_counts,
)
from hsftrain.data.nifti import DataError, check_pair, header_info, load_volume
from hsftrain.data.subjects import (
    DatasetSpec,
    Discovery,
    Subject,
    assign_tables,
    id_stem,
    subject_id,
)

__all__ = [
    "DatasetSpec",
    "Discovery",
    "Subject",
    "discover",
    "find_pairs",
    "id_stem",
    "label_counts",
    "read_label",
]

log = logging.getLogger(__name__)


def _label_for(mri: Path, mri_pattern: str, label_pattern: str) -> list[Path]:
    """Label files next to ``mri`` matching ``label_pattern`` (``{id}`` = :func:`id_stem`)."""
    if "{id}" in label_pattern:
        label_pattern = label_pattern.replace("{id}", glob.escape(id_stem(mri, mri_pattern)))
    matches = sorted(Path(p) for p in glob.glob(str(mri.parent / label_pattern), recursive=True))
    return [m for m in matches if m.resolve() != mri.resolve()]


def find_pairs(
    spec: DatasetSpec, main_path: Path | None = None, env: str | None = None
) -> list[tuple[str, Path, Path]]:
    """(subject id, image, label) for every MRI matching the dataset's patterns.

    Args:
        main_path, env: ``datasets.main_path`` and the environment variable it reads
            (named in the error when the folder is missing).

    Raises:
        DataError: the dataset folder is missing or no pattern matches any file.
    """
    if not spec.root.is_dir():
        key = f"{env} or datasets.main_path" if env else "datasets.main_path"
        now = f" (now {main_path})" if main_path is not None else ""
        raise DataError(
            f"dataset {spec.name!r}: folder {spec.root} does not exist; set {key} to the "
            f"folder that holds the data{now}, or fix datasets.datasets.{spec.name}.path"
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
        globs = ", ".join(
            f"{spec.root / m} (label {lb!r} beside it)" for m, lb in spec.patterns.values()
        )
        key = f"{env} or datasets.main_path" if env else "datasets.main_path"
        raise DataError(
            f"dataset {spec.name!r}: no image matches {globs}; check {key}, "
            f"datasets.datasets.{spec.name}.path and its `patterns`"
        )
    return pairs


def _raw_label(path: Path, canonical: bool) -> np.ndarray:
    """The label map as int64, before any remapping.

    Raises:
        DataError: unreadable file, non-integer or negative values.
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
    return data


def _check_mapped(spec: DatasetSpec, path: Path, counts: dict[int, int]) -> None:
    """Refuse raw values missing from the dataset's ``labels`` table (with voxel counts).

    Raises:
        DataError: names the file, the values, their voxel counts and the key to fix.
    """
    table = {0: 0, **(spec.labels or {})}
    missing = {v: n for v, n in counts.items() if v not in table}
    if spec.labels is None or not missing:
        return
    first = min(missing)
    raise DataError(
        f"label values {sorted(missing)} in {path} ({describe_counts(missing)}) are missing "
        f"from datasets.datasets.{spec.name}.labels {dict(sorted(spec.labels.items()))}: map "
        f"each there (e.g. `{first}: 0` makes {first} background) or fix the label map"
    )


def read_label(spec: DatasetSpec, path: Path, canonical: bool = False) -> np.ndarray:
    """Load a label map and remap it with the dataset's ``labels`` table.

    Raises:
        DataError: unreadable file, or values missing from the table (named with their
            voxel counts).
    """
    data = _raw_label(path, canonical)
    if spec.labels is None:
        return data
    _check_mapped(spec, path, value_counts(data))
    return remap_labels(data, spec.labels, source=str(path))


def label_counts(spec: DatasetSpec, path: Path) -> dict[int, int]:
    """``{training value: voxel count}`` of a label map (remapped with ``labels``).

    Raises:
        DataError: as :func:`read_label`.
    """
    raw = value_counts(_raw_label(path, canonical=False))
    if spec.labels is None:
        return raw
    _check_mapped(spec, path, raw)
    table = {0: 0, **spec.labels}
    counts: dict[int, int] = {}
    for value, voxels in raw.items():
        counts[table[value]] = counts.get(table[value], 0) + voxels
    return counts


def _check_values(spec: DatasetSpec, found: list[tuple[Subject, dict[int, int]]]) -> None:
    """Refuse label values that would make a class no map really holds: values outside
    ``labels_names``, or, without ``labels`` and ``labels_names``, stray values
    (:func:`hsftrain.data.labels.stray_values`).

    Raises:
        DataError: names the file, the value, its voxel count and the key to fix.
    """
    key = f"datasets.datasets.{spec.name}"
    if spec.labels_names is not None:
        expected = {0, *spec.labels_names}
        for subject, counts in found:
            extra = {v: n for v, n in counts.items() if v not in expected}
            if extra:
                what = (
                    "label values" if spec.labels is None else f"label values (after {key}.labels)"
                )
                first = min(extra)
                raise DataError(
                    f"{what} {sorted(extra)} in {subject.label} ({describe_counts(extra)}) are "
                    f"not in {key}.labels_names {sorted(expected - {0})}: name them there, or map "
                    f"them with {key}.labels (e.g. `{first}: 0` makes {first} background), or fix "
                    "the label map"
                )
        return
    if spec.labels is not None:
        return
    strays = stray_values({str(s.label): counts for s, counts in found})
    if not strays:
        return
    values = sorted({v for _, counts in found for v in counts} - {0})
    stray = {s.value for s in strays}
    listed = ", ".join(f"{v}: {0 if v in stray else v}" for v in values)
    where = "; ".join(
        f"{s.source}: label value {s.value} ({s.voxels} voxel{'s' if s.voxels != 1 else ''}, "
        f"in {s.maps} of {s.total} label maps)"
        for s in strays
    )
    raise DataError(
        f"{where} looks like stray voxels, not a class (the smallest class of dataset "
        f"{spec.name!r} covers {strays[0].reference} voxels in a typical map): fix the label "
        f"map, or list every value in {key}.labels, e.g. {key}.labels='{{{listed}}}' "
        f"(`{strays[0].value}: 0` makes it background; a value of its own keeps it as a class)"
    )


def _lacking_note(name: str, forgiving: bool | None) -> str:
    """What training does with a class that some label maps lack (for the warning)."""
    if forgiving is None:
        return (
            f"training forgives a {name} predicted in them (with models.use_forgiving_loss="
            f"false it trains {name} as background there)"
        )
    if forgiving:
        return f"{name} is forgiven there (the loss and validation Dice leave it out)"
    return (
        f"{name} is trained as background there (models.use_forgiving_loss=false: the "
        f"model learns that their crops hold no {name}; validation Dice leaves it out)"
    )


def _kept(
    spec: DatasetSpec,
    found: list[tuple[Subject, dict[int, int]]],
    skipped: list[tuple[Path, str]],
    forgiving: bool | None = None,
) -> list[Subject]:
    """The subjects of a dataset with ``labels_names`` that train: a map lacking some of
    the named classes is kept (the crop does not reach them) with its lacking label
    values (:attr:`Subject.lacking`), and one warning per class names the maps and says
    whether the class is forgiven there (``forgiving``: ``models.use_forgiving_loss``, None
    when unknown); a map with no labelled voxel is skipped (appended to ``skipped``)."""
    assert spec.labels_names is not None
    kept: list[Subject] = []
    lacking: dict[int, list[str]] = {}
    for subject, counts in found:
        if not set(counts) - {0}:
            reason = "the label map has no labelled voxel"
            log.warning("skipping %s: %s", subject.label, reason)
            skipped.append((subject.label, reason))
            continue
        missing = tuple(sorted(set(spec.labels_names) - set(counts) - {0}))
        for value in missing:
            lacking.setdefault(value, []).append(subject.label.name)
        kept.append(replace(subject, lacking=missing) if missing else subject)
    for value, files in sorted(lacking.items()):
        name = spec.labels_names[value]
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        log.warning(
            "dataset %s: %d of %d label maps have no %s (%s); they are used: %s",
            spec.name, len(files), len(found), name, shown, _lacking_note(name, forgiving),
        )  # fmt: skip
    return kept


def _env_of(datasets_cfg: Mapping[str, Any]) -> str | None:
    """The environment variable ``datasets.main_path`` reads (``${oc.env:NAME,...}``)."""
    get_node = getattr(datasets_cfg, "_get_node", None)
    node = get_node("main_path") if get_node is not None else None
    raw = node._value() if node is not None else datasets_cfg.get("main_path")
    found = re.search(r"\$\{oc\.env:(\w+)", str(raw))
    return found.group(1) if found else None


def discover(datasets_cfg: Mapping[str, Any], forgiving: bool | None = None) -> Discovery:
    """Discover and check every subject of the ``datasets`` config group.

    Each pair is checked (3D, label on the image grid, label values in the mapping).
    Subjects whose map lacks some of the dataset's ``labels_names`` are used, each with the
    loss table of its (dataset, lacking classes) pair (:func:`assign_tables`), and one
    warning per class names the maps and says whether training forgives the class there
    (``forgiving``: ``models.use_forgiving_loss``; None: not known, e.g. ``hsftrain data
    prepare``); a map with no labelled voxel is skipped. A value that would become a class
    no map really holds is refused:
    one outside ``labels_names``, or, in a dataset without ``labels`` and
    ``labels_names``, a stray value (:func:`hsftrain.data.labels.stray_values`).

    Raises:
        DataError: missing folders, empty globs, bad files, label values outside the
            dataset's tables or stray ones (file, value and voxel count named), or no
            usable subject.
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
        found: list[tuple[Subject, dict[int, int]]] = []
        for sid, image, label in find_pairs(spec, main_path, _env_of(datasets_cfg)):
            ishape, iaff = header_info(image)
            lshape, laff = header_info(label)
            check_pair(image, label, ishape, iaff, lshape, laff)
            found.append((Subject(sid, image, label, spec.index), label_counts(spec, label)))
        _check_values(spec, found)
        if spec.labels_names is not None:
            result.subjects += _kept(spec, found, result.skipped, forgiving)
            names = spec.labels_names
        else:
            result.subjects.extend(s for s, _ in found)
            seen = sorted(set().union(*(set(c) for _, c in found)) - {0})
            names = {v: f"label_{v}" for v in seen}
            unheld = sorted(set(range(1, max(seen, default=0))) - set(seen))
            if unheld:
                log.warning(
                    "dataset %s: no label map holds the value(s) %s below its largest value "
                    "%d, so the model gets class(es) that are never trained; map the values "
                    "onto consecutive ones with datasets.datasets.%s.labels to avoid them",
                    spec.name,
                    unheld,
                    max(seen),
                    spec.name,
                )
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
    assign_tables(result)
    result.groups = find_duplicates(result.subjects, specs)
    return result

"""Which classes a prediction is scored on, and what they are called.

* **Class names of the prediction's model.** ``hsftrain segment`` writes, next to each
  segmentation ``<stem>_hippocampus_seg.nii.gz`` (its sides
  ``<stem>_hippocampus_seg_<side>.nii.gz`` and crops
  ``<stem>_hippocampus_seg_crop_<side>.nii.gz``), the subject's table
  ``<stem>_hippocampus_volumes.csv``: one row per class of the model (``label``,
  ``name``), classes without a voxel included. :func:`model_names` reads it, so a
  prediction is scored on every class of its model, each under its model's name.
* **FreeSurfer references.** An aseg-style label map (``aseg``, ``aparc+aseg``,
  ``aparc.a2009s+aseg``: :func:`is_freesurfer_aseg`) labels the whole left and right
  hippocampus 17 and 53 among many other structures; compared as they are with an
  hsftrain prediction (classes 1, 2, ...) nothing would match.
  :func:`whole_hippocampus` scores both as whole hippocampus instead.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: FreeSurfer aseg labels of the left and right hippocampus.
ASEG_HIPPOCAMPI: tuple[int, int] = (17, 53)
#: Other FreeSurfer aseg structures of both hemispheres (cerebral white matter and cortex,
#: ventricles, cerebellum, thalamus, caudate, putamen, pallidum, brainstem, amygdala,
#: accumbens, ventral DC, choroid plexus).
ASEG_OTHERS: frozenset[int] = frozenset(
    {2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 18, 24, 26, 28, 31}
    | {41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 54, 58, 60, 63}
)
#: How many of :data:`ASEG_OTHERS` a reference needs, besides 17 and 53, to be an aseg.
MIN_ASEG_OTHERS = 3
#: Name of the single class of a whole-hippocampus comparison.
WHOLE = "hippocampus"
#: Placeholder name of a class with no name.
PLACEHOLDER = "label_{}"

#: ``hsftrain segment``'s segmentation file names (``inference.writer.Outputs``) and the
#: subject table beside them: ``<stem>_hippocampus_volumes.csv``.
_SEGMENT_OUTPUT = re.compile(
    r"^(?P<stem>.+_hippocampus)_seg(?:_crop_[A-Za-z]+|_left|_right)?\.nii\.gz$"
)


def is_freesurfer_aseg(values: Iterable[int]) -> bool:
    """True when ``values`` (a reference's label values) hold both hippocampi (17, 53)
    and at least :data:`MIN_ASEG_OTHERS` other FreeSurfer aseg structures."""
    present = {int(v) for v in values}
    return set(ASEG_HIPPOCAMPI) <= present and len(present & ASEG_OTHERS) >= MIN_ASEG_OTHERS


def whole_hippocampus(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every predicted class -> 1, aseg 17 and 53 -> 1, everything else -> 0."""
    whole_pred = (pred > 0).astype(np.int64)
    return whole_pred, np.isin(ref, ASEG_HIPPOCAMPI).astype(np.int64)


def value_map_text(values: Iterable[int], target: int) -> str:
    """``{1: 1, 2: 1}``: every value of ``values`` to ``target``, as typed on the CLI."""
    return "{" + ", ".join(f"{int(v)}: {target}" for v in sorted(values)) + "}"


def ref_map_hint(
    ref_values: Iterable[int], pred_values: Iterable[int], ref_map: Mapping[int, int]
) -> str | None:
    """What to add when ``ref_map`` merges an aseg's two hippocampi into one label ``v``
    but the prediction has other classes than ``v`` (only ``v`` would be compared); None
    when nothing is amiss."""
    targets = {ref_map.get(v, 0) for v in ASEG_HIPPOCAMPI}
    predicted = {int(v) for v in pred_values if v != 0}
    if len(targets) != 1 or not is_freesurfer_aseg(ref_values):
        return None
    (target,) = targets
    if target == 0 or predicted <= {target}:
        return None
    return (
        f"ref_map merges the aseg hippocampi (17, 53) into label {target} but the prediction "
        f"has classes {sorted(predicted)}: only its label {target} is compared with them; add "
        f"'pred_map={value_map_text(predicted | {target}, target)}' to score the whole "
        "hippocampus"
    )


def class_table(pred: Path) -> Path | None:
    """The subject table ``hsftrain segment`` wrote beside a segmentation of its own
    (None for any other file name)."""
    match = _SEGMENT_OUTPUT.match(pred.name)
    return pred.with_name(f"{match['stem']}_volumes.csv") if match else None


def model_names(pred: Path) -> dict[int, str]:
    """``{value: name}`` of the classes of the model that wrote ``pred`` (from its subject
    table, :func:`class_table`); empty when there is none. A table that cannot be read
    is named in a warning and ignored (the classes keep ``label_<value>`` names)."""
    table = class_table(pred)
    if table is None or not table.is_file():
        return {}
    names: dict[int, str] = {}
    try:
        with table.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, strict=True):
                label, name = (row.get("label") or "").strip(), (row.get("name") or "").strip()
                if not label:
                    continue  # a failed subject's row
                value = int(label)
                if not name or names.setdefault(value, name) != name:
                    raise ValueError(f"label {value} named {names.get(value)!r} and {name!r}")
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError) as err:
        log.warning(
            "%s: class names not read (%s); classes are named label_<value> (give "
            "labels={1: name, ...} to name them)",
            table,
            " ".join(str(err).split()),
        )
        return {}
    return dict(sorted(names.items()))


def choose_names(
    labels: Mapping[int, str] | None, model: Mapping[int, str], present: Iterable[int]
) -> dict[int, str]:
    """Classes scored and their names: ``labels`` when given (its ``label_<v>``
    placeholders named from ``model``), else every class of ``model`` and every value
    ``present`` in either image."""
    if labels is not None:
        return {v: model.get(v, n) if n == PLACEHOLDER.format(v) else n for v, n in labels.items()}
    values = sorted({v for v in model if v != 0} | {int(v) for v in present})
    return {v: model.get(v, PLACEHOLDER.format(v)) for v in values}

"""Pure, table-driven label logic shared by the loss and by inference.

Two ideas live here:

* **Remapping** a dataset's raw label values to the values used for training
  (``datasets.<name>.labels``): :func:`remap_labels`.
* **Granularity merging**: CA subfields are labelled at different granularities
  ("1/2/3", "1/23", "123") and some datasets have HEAD/TAIL labels while others do not.
  One table, :data:`CA_MERGES`, says which class names fold into which coarser name.
  :func:`group_table` turns it into a (G, C) matrix that sums a model's C class
  probabilities into the G classes a dataset distinguishes (the forgiving loss), and
  :func:`merge_lut` / :func:`merge_probs` apply the same table to a prediction (inference
  ``ca_mode``). :func:`without_classes` derives the table of a dataset's label maps that
  lack some of its classes (a crop that does not reach the tail).

It also holds the checks of the label values a dataset's maps hold (:func:`value_counts`,
:func:`describe_counts`, :func:`stray_values`), so that a class no map really holds never
becomes an output class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hsftrain.core.errors import UserError

BACKGROUND = "background"

#: Canonical HSF class names, in the order of hsf_train's label values (0 background ...).
SUBFIELDS: tuple[str, ...] = (BACKGROUND, "DG", "CA1", "CA2", "CA3", "SUB", "HEAD", "TAIL")

#: Output classes of the published HSF models (HSF 1.x, models 1.0.0-4.0.0): background and
#: the five subfields. Head/tail-only labels train them through the forgiving loss; they are
#: not output classes.
HSF_MODEL_CLASSES: tuple[str, ...] = SUBFIELDS[:6]

#: CA granularities, from finest to coarsest. Each maps a class name to the coarser name it
#: is merged into; names not listed are kept as they are. "whole" merges every foreground
#: class into one hippocampus label. "ap" is the long-axis scheme of the MSD hippocampus
#: set: the head is "anterior", everything labelled behind it "posterior" (in the HSF and
#: ASHS protocols the subfields and the subiculum are labelled in the body only, so they
#: all lie behind the head); other classes (e.g. cortex) are not hippocampus there.
CA_MERGES: dict[str, dict[str, str]] = {
    "1/2/3": {},
    "1/23": {"CA2": "CA2/3", "CA3": "CA2/3"},
    "123": {"CA1": "CA", "CA2": "CA", "CA3": "CA"},
    "ap": {
        "HEAD": "anterior",
        **dict.fromkeys(("BODY", "TAIL", "DG", "CA1", "CA2", "CA3", "SUB"), "posterior"),
    },
}
WHOLE = "whole"
CA_TYPES: tuple[str, ...] = (*CA_MERGES, WHOLE)


class LabelError(UserError, ValueError):
    """A label map or label table that cannot be used (names the file or key and the fix)."""


def merged_name(name: str, ca_type: str) -> str:
    """Name that class ``name`` takes at granularity ``ca_type``.

    Raises:
        LabelError: unknown ``ca_type``.
    """
    if ca_type == WHOLE:
        return BACKGROUND if name == BACKGROUND else "hippocampus"
    if ca_type not in CA_MERGES:
        raise LabelError(f"unknown ca_type {ca_type!r}: use one of {', '.join(CA_TYPES)}")
    return CA_MERGES[ca_type].get(name, name)


def remap_labels(
    label_map: np.ndarray, table: Mapping[int, int], source: str = "", unlisted: str = "error"
) -> np.ndarray:
    """Map label values through ``table`` ({value: new value}).

    The one label value map of hsftrain: a dataset's raw values to training values
    (``datasets.<name>.labels``) and ``hsftrain evaluate``'s ``pred_map`` / ``ref_map``.

    Args:
        label_map: integer array of any shape.
        table: ``{value: new value}``; 0 stays background unless the table says otherwise.
        source: file name used in the error message.
        unlisted: values present in ``label_map`` but absent from ``table``: ``"error"``
            (a :class:`LabelError`) or ``"background"`` (they become 0).

    Returns:
        int64 array of ``label_map``'s shape.

    Raises:
        LabelError: ``unlisted="error"`` and values missing from ``table``.
        ValueError: unknown ``unlisted``.
    """
    if unlisted not in ("error", "background"):
        raise ValueError(f"unlisted={unlisted!r}: use 'error' or 'background'")
    values, inverse, counts = np.unique(
        np.asarray(label_map, dtype=np.int64), return_inverse=True, return_counts=True
    )
    full = {0: 0, **{int(k): int(v) for k, v in table.items()}}
    missing = {int(v): int(n) for v, n in zip(values, counts, strict=True) if int(v) not in full}
    if missing and unlisted == "error":
        where = f" in {source}" if source else ""
        raise LabelError(
            f"label values {sorted(missing)}{where} ({describe_counts(missing)}) are missing "
            f"from the mapping {dict(sorted(full.items()))}: add them to the dataset's "
            "`labels` table (e.g. `<value>: 0` makes a value background)"
        )
    mapped = np.array([full.get(int(v), 0) for v in values], dtype=np.int64)
    return mapped[inverse].reshape(np.shape(label_map))


def class_names(labels_names: Mapping[int, str], num_classes: int | None = None) -> list[str]:
    """Ordered class names (index = label value) from a ``{value: name}`` table.

    Background (0) is added when absent. Gaps are named ``label_<i>``.
    """
    top = max([0, *map(int, labels_names)])
    n = num_classes if num_classes is not None else top + 1
    names = [f"label_{i}" for i in range(n)]
    names[0] = BACKGROUND
    for value, name in labels_names.items():
        if int(value) < n:
            names[int(value)] = str(name)
    return names


def group_table(
    model_names: Sequence[str], dataset_names: Sequence[str], ca_type: str = "1/2/3"
) -> np.ndarray:
    """Matrix summing model class probabilities into the classes a dataset labels.

    Model class ``c`` goes to the dataset class whose name equals ``merged_name(c, ca_type)``;
    classes the dataset does not label at all (e.g. HEAD/TAIL in a dataset without them)
    go to background: predicting them where the dataset says background is forgiven.

    Args:
        model_names: the model's C output class names (index 0 = background).
        dataset_names: the dataset's G class names (index = training label value).
        ca_type: the dataset's CA granularity.

    Returns:
        ``(G, C)`` float32 matrix with exactly one 1 per column.

    Raises:
        LabelError: a dataset class that no model class maps to.
    """
    index = {name: g for g, name in enumerate(dataset_names)}
    table = np.zeros((len(dataset_names), len(model_names)), dtype=np.float32)
    for c, name in enumerate(model_names):
        table[index.get(merged_name(name, ca_type), 0), c] = 1.0
    unreached = [n for g, n in enumerate(dataset_names) if g and not table[g].any()]
    if unreached:
        raise LabelError(
            f"dataset classes {unreached} (ca_type {ca_type!r}) match no model class "
            f"{list(model_names)}: rename them in `labels_names` or add the classes to the model"
        )
    return table


def without_classes(table: np.ndarray, absent: Iterable[int]) -> np.ndarray:
    """The group table of label maps that lack some of their dataset's classes.

    The model classes that go to the dataset classes ``absent`` go to background instead,
    as :func:`group_table` does for classes a dataset does not label at all: predicting
    them where such a map says background is forgiven. Their rows are left empty (no model
    class goes there; the forgiving loss counts only rows that some class reaches).

    Args:
        table: ``(G, C)`` group table of the dataset (:func:`group_table`).
        absent: dataset label values (rows, not background) the maps lack.

    Returns:
        ``(G, C)`` float32 matrix, still with exactly one 1 per column.
    """
    out = np.array(table, dtype=np.float32, copy=True)
    for g in sorted({int(v) for v in absent} - {0}):
        out[0] += out[g]
        out[g] = 0.0
    return out


def merge_lut(model_names: Sequence[str], ca_type: str) -> tuple[np.ndarray, list[str]]:
    """Look-up table merging predicted labels at granularity ``ca_type``.

    Merged classes take the smallest label value of their members, so that "1/23" keeps
    CA2's value for CA2+CA3, as HSF does.

    Returns:
        ``(lut, names)``: ``lut[value]`` is the merged value; ``names[value]`` the merged
        class name (empty for values no longer used).
    """
    lut = np.arange(len(model_names), dtype=np.int64)
    first: dict[str, int] = {}
    names = [""] * len(model_names)
    for c, name in enumerate(model_names):
        merged = merged_name(name, ca_type) if ca_type else name
        first.setdefault(merged, c)
        lut[c] = first[merged]
        names[first[merged]] = merged
    return lut, names


def merge_probs(probs: np.ndarray, model_names: Sequence[str], ca_type: str) -> np.ndarray:
    """Sum class probabilities ``(C, ...)`` of merged classes into their first member."""
    if not ca_type:
        return probs
    lut, _ = merge_lut(model_names, ca_type)
    out = np.zeros_like(probs)
    np.add.at(out, lut, probs)
    return out


def value_counts(label_map: np.ndarray) -> dict[int, int]:
    """``{label value: voxel count}`` of an integer label map (background included)."""
    values, counts = np.unique(np.asarray(label_map), return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts, strict=True)}


def describe_counts(counts: Mapping[int, int]) -> str:
    """``"7: 20 voxels, 9: 1 voxel"``: label values with their voxel counts, for messages."""
    return ", ".join(f"{v}: {n} voxel{'s' if n != 1 else ''}" for v, n in sorted(counts.items()))


#: A label value of a dataset without a ``labels`` table is *stray* (refused, see
#: :func:`stray_values`) when it is in at most this share of the dataset's label maps (at
#: least one map) ...
STRAY_MAP_SHARE = 0.1
#: ... and covers, in every map that holds it, less than this share of the voxels that the
#: smallest regular class (a value in more than half of the maps) covers in a typical map.
STRAY_VOXEL_SHARE = 0.25


@dataclass(frozen=True)
class StrayValue:
    """A label value that looks like noise rather than a class (see :func:`stray_values`)."""

    value: int
    #: the label map holding most of its voxels, and that number of voxels
    source: str
    voxels: int
    #: how many maps hold it, out of ``total`` maps
    maps: int
    total: int
    #: median voxels per map of the smallest regular class
    reference: int


def stray_values(counts: Mapping[str, Mapping[int, int]]) -> list[StrayValue]:
    """Label values that look like stray voxels, not like a class.

    The maps of one dataset are compared with each other. *Regular* values are those in
    more than half of the maps; a value is stray when it is in no more than
    ``max(1, STRAY_MAP_SHARE * maps)`` maps and, in each of them, covers fewer than
    ``STRAY_VOXEL_SHARE`` times the voxels the smallest regular class covers in a typical
    map (its median over the maps that hold it). Without a regular class nothing is stray.

    Args:
        counts: ``{label map: {value: voxel count}}`` (:func:`value_counts`) for every map
            of a dataset; background (0) is ignored.

    Returns:
        The stray values, smallest value first.

    Example:
        >>> maps = {f"m{i}": {0: 900, 1: 400, 2: 300} for i in range(8)}
        >>> maps["m3"] = {0: 880, 1: 400, 2: 300, 7: 20}
        >>> [(s.value, s.source, s.voxels) for s in stray_values(maps)]
        [(7, 'm3', 20)]
    """
    total = len(counts)
    held: dict[int, list[tuple[int, str]]] = {}
    for source, values in counts.items():
        for value, voxels in values.items():
            if int(value) != 0 and int(voxels) > 0:
                held.setdefault(int(value), []).append((int(voxels), str(source)))
    regular = [
        int(np.median([n for n, _ in maps])) for maps in held.values() if 2 * len(maps) > total
    ]
    if not regular:
        return []
    reference = min(regular)
    most_maps = max(1, int(STRAY_MAP_SHARE * total))
    strays = []
    for value, maps in sorted(held.items()):
        if 2 * len(maps) > total or len(maps) > most_maps:
            continue
        voxels, source = max(maps)
        if voxels < STRAY_VOXEL_SHARE * reference:
            strays.append(StrayValue(value, source, voxels, len(maps), total, reference))
    return strays

"""One subject scored: both label maps read, the classes chosen, every class measured.

:func:`evaluate_pair` is what ``hsftrain evaluate`` runs per subject; :func:`report_facts`
then says once per run what was decided without being asked (a FreeSurfer reference scored as whole
hippocampus, class names read from ``hsftrain segment``'s tables, classes absent from
both images).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hsftrain.core.errors import UserError
from hsftrain.data.labels import remap_labels
from hsftrain.evaluation.classes import (
    ASEG_HIPPOCAMPI,
    WHOLE,
    choose_names,
    class_table,
    is_freesurfer_aseg,
    model_names,
    ref_map_hint,
    whole_hippocampus,
)
from hsftrain.evaluation.metrics import label_metrics, present_labels
from hsftrain.evaluation.pairing import Pair
from hsftrain.evaluation.report import ABSENT, LabelResult

log = logging.getLogger(__name__)

#: Metrics that a class absent from both images has no value for (NaN).
SCORES: tuple[str, ...] = ("dice", "hd95_mm", "assd_mm", "volume_similarity")


class EvaluationError(UserError, ValueError):
    """A prediction/reference pair that cannot be compared (names both files and the fix)."""


def load_label_map(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Integer label map, affine and voxel spacing (mm, from the header zooms) of a 3D file.

    A trailing singleton 4th dimension is dropped.

    Raises:
        EvaluationError: unreadable, not 3D, or non-integer values (probabilities).
    """
    from hsftrain.data.nifti import read_image

    image, data = read_image(path, "re-export it or leave it out of `pred`/`ref`", EvaluationError)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise EvaluationError(
                f"{path}: has non-integer values, it is not a label map; evaluate hard "
                "segmentations (argmax), not probabilities"
            )
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return data.astype(np.int64), np.asarray(image.affine, dtype=np.float64), spacing


@dataclass(frozen=True)
class PairFacts:
    """How one pair was scored, reported once per run by :func:`report_facts`."""

    whole_hippocampus: bool = False
    names_from: Path | None = None
    hint: str | None = None


def _load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Prediction, reference and the reference's spacing.

    Raises:
        EvaluationError: unreadable files or shapes that differ.
    """
    pred, pred_affine, pred_spacing = load_label_map(pair.pred)
    ref, ref_affine, spacing = load_label_map(pair.ref)
    if pred.shape != ref.shape:
        raise EvaluationError(
            f"prediction {pair.pred} has shape {pred.shape} but its reference {pair.ref} has "
            f"shape {ref.shape}; resample the prediction onto the reference grid (nearest "
            "neighbour) or check the pairing (`id_regex`)"
        )
    if not np.allclose(pred_affine, ref_affine, atol=1e-3):
        log.warning(
            "%s: affine differs from its reference %s (spacing %s vs %s); distances use the "
            "reference spacing",
            pair.pred,
            pair.ref,
            pred_spacing,
            spacing,
        )
    return pred, ref, spacing


def _aseg_pair(pred: np.ndarray, ref: np.ndarray) -> bool:
    """A FreeSurfer aseg reference and a prediction that is not one (no 17, no 53)."""
    return is_freesurfer_aseg(np.unique(ref)) and not np.isin(pred, ASEG_HIPPOCAMPI).any()


def evaluate_pair(
    pair: Pair,
    labels: Mapping[int, str] | None,
    surface: bool = True,
    pred_map: Mapping[int, int] | None = None,
    ref_map: Mapping[int, int] | None = None,
    facts: list[PairFacts] | None = None,
) -> list[LabelResult]:
    """Metrics of one subject, with the reference's spacing (after ``pred_map`` /
    ``ref_map`` relabelling by :func:`~hsftrain.data.labels.remap_labels`: values they do
    not list become background).

    Classes: ``labels``, else every class of the prediction's model
    (:func:`~hsftrain.evaluation.classes.model_names`, also its names) and every value
    present. A class in neither image is :data:`~.report.ABSENT` (metrics NaN). Without
    maps, a FreeSurfer aseg reference is scored as whole hippocampus
    (:func:`~hsftrain.evaluation.classes.whole_hippocampus`). ``facts``, when given, gets
    how the pair was scored.

    Raises:
        EvaluationError: unreadable files or shapes that differ.
    """
    pred, ref, spacing = _load_pair(pair)
    asked_aseg = labels is not None and bool(set(labels) & set(ASEG_HIPPOCAMPI))
    if pred_map is None and ref_map is None and not asked_aseg and _aseg_pair(pred, ref):
        pred, ref = whole_hippocampus(pred, ref)
        model, how = {1: WHOLE}, PairFacts(whole_hippocampus=True)
    else:
        model = model_names(pair.pred) if pred_map is None else {}
        hint = None
        if ref_map is not None and pred_map is None:
            hint = ref_map_hint(np.unique(ref), np.unique(pred), ref_map)
        how = PairFacts(names_from=class_table(pair.pred) if model else None, hint=hint)
        if pred_map is not None:
            pred = remap_labels(pred, pred_map, unlisted="background")
        if ref_map is not None:
            ref = remap_labels(ref, ref_map, unlisted="background")
    names = choose_names(labels, model, present_labels(pred, ref) if labels is None else ())
    per_label = label_metrics(pred, ref, list(names), spacing=spacing, surface=surface)
    results = []
    for value, metrics in per_label.items():
        absent = metrics["pred_volume_mm3"] == 0 and metrics["ref_volume_mm3"] == 0
        score = {k: math.nan if absent else metrics.get(k, math.nan) for k in SCORES}
        results.append(
            LabelResult(
                subject=pair.subject,
                label=value,
                label_name=names[value],
                dice=score["dice"],
                hd95_mm=score["hd95_mm"],
                assd_mm=score["assd_mm"],
                volume_similarity=score["volume_similarity"],
                pred_volume_mm3=metrics["pred_volume_mm3"],
                ref_volume_mm3=metrics["ref_volume_mm3"],
                note=ABSENT if absent else "",
            )
        )
        log.debug("%s label %d: %s", pair.subject, value, metrics)
    if facts is not None:
        facts.append(how)
    return results


def report_facts(facts: Sequence[PairFacts], results: Sequence[LabelResult]) -> None:
    """One log line per way of scoring that the user did not spell out."""
    whole = sum(f.whole_hippocampus for f in facts)
    if whole:
        log.info(
            "%d of %d references are FreeSurfer aseg label maps (hippocampi 17 and 53 among "
            "other structures): scored as whole hippocampus, aseg 17 + 53 -> 1 and every "
            "predicted class -> 1 (give ref_map= and pred_map= to score otherwise)",
            whole,
            len(facts),
        )
    named = [f.names_from for f in facts if f.names_from is not None]
    if named:
        classes = ", ".join(
            f"{v} {n}" for v, n in sorted({(r.label, r.label_name) for r in results})
        )
        log.info(
            "class names from the tables hsftrain segment wrote beside %d prediction(s), e.g. "
            "%s: %s (labels= to choose or rename classes)",
            len(named),
            named[0].name,
            classes,
        )
    hints = [f.hint for f in facts if f.hint]
    if hints:
        log.warning("%s (%d of %d pairs)", hints[0], len(hints), len(facts))
    absent: dict[tuple[int, str], int] = {}
    for r in results:
        if r.note == ABSENT:
            absent[r.label, r.label_name] = absent.get((r.label, r.label_name), 0) + 1
    for (value, name), count in sorted(absent.items()):
        log.info(
            "label %d (%s) is in neither the prediction nor the reference of %d subject(s): "
            "reported as absent (metrics nan), not averaged",
            value,
            name,
            count,
        )

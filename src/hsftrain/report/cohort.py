"""The cohort table of a QC report: one row per segmented crop, scored for review.

Each crop of a segmentation output (:func:`hsftrain.collect.outputs.find_crops`) gives its
label volumes (counted on its prediction), whole-hippocampus volume, mean uncertainty
(where ``segment`` wrote an uncertainty map) and the flag of its volumes table; subjects
that ``segment`` could not segment come from the output's ``volumes.csv``. Each row is
then marked where it stands out (:func:`score_rows`) and the rows most likely wrong come
first.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from hsftrain.collect.outputs import NO_SIDE, SegmentedCrop
from hsftrain.inference.layout import HEMI
from hsftrain.inference.writer import MARKER, Outputs

#: A robust z-score (median/MAD) beyond this marks a volume or an uncertainty.
Z_LIMIT = 3.5
#: A label below this share of its cohort median is marked tiny.
TINY_SHARE = 0.2
#: Left/right whole-hippocampus difference (share of their mean) marked as asymmetric.
MAX_ASYMMETRY = 0.5
#: Robust z-scores need this many crops of a side.
MIN_COHORT = 5


@dataclass
class Row:
    """One crop of the cohort (or one failed subject: ``failed`` set, no volumes)."""

    subject: str
    side: str
    volumes: dict[str, float] = field(default_factory=dict)  # label name -> mm3
    labels: dict[int, str] = field(default_factory=dict)  # label value -> name
    uncertainty: float | None = None
    flag: str = ""
    failed: str = ""
    crop: SegmentedCrop | None = None
    qc: Path | None = None
    uncertainty_map: Path | None = None
    asymmetry: float | None = None
    marks: list[str] = field(default_factory=list)
    score: float = 0.0

    @property
    def whole(self) -> float | None:
        return float(sum(self.volumes.values())) if self.volumes else None


def _siblings(crop: SegmentedCrop) -> tuple[Path | None, Path | None, Path]:
    """The QC figure, uncertainty map and volumes table ``segment`` wrote for ``crop``."""
    pred = crop.prediction
    kind = "crop" if crop.side == NO_SIDE else crop.side
    if MARKER in pred.name:  # HSF layout
        outputs = Outputs(pred.parent, pred.name.split(MARKER)[0])
        qc, unc, table = outputs.qc(kind), outputs.uncertainty(kind), outputs.volumes
    else:  # BIDS layout: <entities>_desc-[side]hippocampus[crop]_dseg.nii.gz
        unc = pred.with_name(pred.name.replace("_dseg.nii.gz", "_uncertainty.nii.gz"))
        hemi = crop.side if crop.side != NO_SIDE else ""
        qc = next(
            iter(sorted(pred.parent.glob(f"{crop.subject}*_desc-{hemi}hippocampus_qc.png"))), pred
        )
        table = pred.parent / f"{crop.subject}_desc-hippocampus_volumes.tsv"
    return (qc if qc.is_file() else None), (unc if unc.is_file() else None), table


def _table_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ","))


def _names(table: list[dict[str, str]]) -> dict[int, str]:
    names: dict[int, str] = {}
    for row in table:
        try:
            names[int(row.get("label") or row.get("index") or "")] = str(row.get("name", ""))
        except ValueError:
            continue
    return names


def crop_row(crop: SegmentedCrop) -> Row:
    """The volumes, uncertainty and flag of one segmented crop."""
    qc, unc, table_path = _siblings(crop)
    table = _table_rows(table_path)
    names = _names(table)
    if not names:  # BIDS: the label names of the derivatives dataset's dseg.tsv
        tsv = next(
            (p / "dseg.tsv" for p in crop.prediction.parents if (p / "dseg.tsv").is_file()), None
        )
        names = _names(_table_rows(tsv)) if tsv else {}
    image = nib.load(str(crop.prediction))
    label_map = np.asarray(image.dataobj).astype(np.int64)
    voxel = float(np.prod(image.header.get_zooms()[:3]))
    counts = np.bincount(label_map.ravel().clip(0), minlength=max(names, default=0) + 1)
    values = sorted(set(names) | {int(v) for v in np.flatnonzero(counts)}) or [1]
    labels = {v: names.get(v) or f"label {v}" for v in values if v > 0}
    volumes = {
        name: round(float(counts[v] if v < len(counts) else 0) * voxel, 1)
        for v, name in labels.items()
    }
    uncertainty = None
    if unc is not None:
        u = np.asarray(nib.load(str(unc)).dataobj, dtype=np.float32)
        inside = u[label_map > 0]
        uncertainty = round(float(inside.mean()), 4) if inside.size else None
    side = "crop" if crop.side == NO_SIDE else crop.side
    side_values = {crop.side, side, HEMI.get(side, side)}  # HSF side, BIDS hemi (L, R)
    flags = {r.get("flag", "") for r in table if (r.get("side") or r.get("hemi")) in side_values}
    flag = "; ".join(sorted(f for f in flags if f and f != NO_SIDE))
    return Row(crop.subject, crop.side, volumes, labels, uncertainty, flag, "", crop, qc, unc)


def failed_rows(seg_dir: Path, known: set[str]) -> list[Row]:
    """Subjects the output's ``volumes.csv`` (BIDS: ``volumes.tsv``) lists as failed (not
    among ``known``)."""
    out = []
    for row in _table_rows(seg_dir / "volumes.csv") + _table_rows(seg_dir / "volumes.tsv"):
        flag = row.get("flag") or ""
        subject = row.get("subject") or row.get("participant_id") or ""
        if row.get("session") not in (None, "", NO_SIDE):
            subject += f"_{row['session']}"
        if flag.startswith("failed") and subject and subject not in known:
            side = row.get("side") or row.get("hemi") or NO_SIDE
            out.append(Row(subject, side, failed=flag))
            known.add(subject)
    return out


def _robust_z(values: Sequence[float]) -> list[float]:
    """Robust z-scores: 0.6745 (x - median) / MAD (0 where the MAD is 0 or too few)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < MIN_COHORT:
        return [0.0] * len(x)
    median = float(np.median(x))
    mad = float(np.median(np.abs(x - median)))
    if mad <= 0:
        mad = float(np.mean(np.abs(x - median))) * 0.8 or 0.0
    if mad <= 0:
        return [0.0] * len(x)
    return [0.6745 * (v - median) / mad for v in x]


def score_rows(rows: list[Row]) -> list[Row]:
    """Mark each row where it stands out and sort the rows most likely wrong first.

    Marks: failed subjects; empty or tiny labels (below :data:`TINY_SHARE` of the median
    of its side); robust z-scores beyond :data:`Z_LIMIT` of each label volume, the whole
    volume and the mean uncertainty, per side; left/right asymmetry beyond
    :data:`MAX_ASYMMETRY`; the flag ``segment`` wrote. The score orders them: failed,
    then empty labels, then flags and the largest |z|.
    """
    for row in rows:
        row.marks, row.score = [], 0.0
        if row.failed:
            row.marks.append("failed")
            row.score = 1000.0
        if row.flag:
            row.marks.append(f"flag: {row.flag}")
            row.score += 20.0
    ok = [r for r in rows if not r.failed]
    for side in sorted({r.side for r in ok}):
        group = [r for r in ok if r.side == side]
        labels = sorted({name for r in group for name in r.volumes})
        for name in [*labels, "whole"]:
            values = [
                (r.whole or 0.0) if name == "whole" else r.volumes.get(name, 0.0) for r in group
            ]
            median = float(np.median(values))
            for r, v, z in zip(group, values, _robust_z(values), strict=True):
                if v <= 0:
                    r.marks.append(f"{name} empty")
                    r.score += 100.0
                elif len(group) >= MIN_COHORT and v < TINY_SHARE * median:
                    r.marks.append(f"{name} tiny ({v:.0f} mm3)")
                    r.score += 50.0
                if abs(z) > Z_LIMIT and v > 0:
                    r.marks.append(f"{name} z={z:+.1f}")
                    r.score += abs(z)
        unc = [r for r in group if r.uncertainty is not None]
        for r, z in zip(unc, _robust_z([r.uncertainty or 0.0 for r in unc]), strict=True):
            if z > Z_LIMIT:
                r.marks.append(f"uncertainty z={z:+.1f}")
                r.score += z
    _asymmetry(ok)
    rows.sort(key=lambda r: (-r.score, r.subject, r.side))
    return rows


def _asymmetry(rows: list[Row]) -> None:
    """Left/right whole-volume asymmetry of whole heads: |L - R| / mean."""
    sides = {(r.subject, r.side): r for r in rows}
    for (subject, side), left in sides.items():
        right = sides.get((subject, "right"))
        if side != "left" or right is None:
            continue
        a, b = left.whole or 0.0, right.whole or 0.0
        asym = abs(a - b) / ((a + b) / 2) if a + b > 0 else math.nan
        for r in (left, right):
            r.asymmetry = None if math.isnan(asym) else round(asym, 3)
            if not math.isnan(asym) and asym > MAX_ASYMMETRY:
                r.marks.append(f"asymmetry {asym:.2f}")
                r.score += 10.0 + asym

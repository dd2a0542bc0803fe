"""The last step of a subject: its native segmentations, volumes table, look-up tables and,
in the BIDS layout, the JSON sidecars and the derivatives dataset's own files.

Whole-head inputs keep the hemispheres apart in every layout: each side is also written on
the input's grid in its own file (HSF: ``<stem>_hippocampus_seg_{left,right}.nii.gz``
besides ``<stem>_hippocampus_seg.nii.gz`` holding both; BIDS: ``desc-lefthippocampus``
and ``desc-righthippocampus`` ``dseg`` files), with the class values of the models in each
(where the two crops overlap, the left side keeps the voxels, as in the file of both).

The file that marks a subject finished is written last: the native segmentation (HSF), the
subject's ``_volumes.tsv`` (BIDS).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from hsftrain.core.atomic import write_text_atomic
from hsftrain.inference import luts, provenance
from hsftrain.inference.image import Volume, atomic_path, save_nifti
from hsftrain.inference.layout import HEMI, BidsOutputs
from hsftrain.inference.roiloc import Box
from hsftrain.inference.writer import Outputs, write_volumes

#: BIDS version the derivatives follow.
BIDS_VERSION = "1.10.0"
#: Files of a BIDS derivatives output that the specification has no name for.
BIDSIGNORE = (
    "volumes.tsv",
    "*_volumes.tsv",
    "*_uncertainty.nii.gz",
    "*_qc.png",
    "*_itksnap.txt",
    "*_freesurfer.txt",
    "*_hippocampus_*",  # HSF names: the T2-grid results of multispectral.t2_space=true
    "report.html",  # the cohort QC report (hsftrain report)
    "report_assets",
)
#: The derivatives dataset's README.
README = """# hsftrain hippocampal subfield segmentations

Written by `hsftrain segment` (see dataset_description.json for the version, models and
preset). Per subject and session, in `anat/`: `desc-hippocampus` (or `desc-lefthippocampus`
and `desc-righthippocampus` for a whole head) `dseg` images on the input's grid,
`desc-*hippocampuscrop` images on each crop's grid, the labels in `dseg.tsv`, volumes (mm3)
in `*_volumes.tsv` and, for all subjects, `volumes.tsv`.
"""
#: Provenance columns ending each volumes row.
PROVENANCE = ("hsftrain_version", "models", "preset")
#: Whole-hippocampus total column of the BIDS volumes tables.
TOTAL = "hippocampus"


@dataclass(frozen=True)
class ModelsUsed:
    """What the results record about the models (look-up tables and provenance).

    Attributes:
        names: class names by label value.
        paths: the model files.
        description: the preset's description.
    """

    names: Sequence[str]
    paths: Sequence[Path]
    description: str


def write_results(
    outputs: Outputs | BidsOutputs,
    volume: Volume,
    canonical: np.ndarray,
    placed: Sequence[tuple[Box, np.ndarray]],
    rows: list[dict[str, object]],
    used: ModelsUsed,
) -> None:
    """Write the native segmentations (each side apart), the volumes table (with the
    provenance columns), the look-up tables and, last, the file marking the subject done.

    Args:
        canonical: ``(X, Y, Z)`` both sides' labels, canonical orientation.
        placed: each crop's box and label map.
        rows: the subject's volumes rows (:func:`hsftrain.inference.writer.volume_rows`).
        used: the models' class names, files and description (for the provenance).
    """
    names, models, description = used.names, used.paths, used.description
    prov = provenance.columns(models, description)
    for row in rows:
        row.update(prov)
    write_text_atomic(outputs.lut("itksnap"), luts.itksnap_text(names))
    write_text_atomic(outputs.lut("freesurfer"), luts.freesurfer_text(names))
    crop_input = placed[0][0].side == "crop" if placed else True
    sides: list[str] = []
    if not crop_input:
        taken = np.zeros(canonical.shape, dtype=bool)
        for box, labels in placed:  # overlapping boxes: the first side keeps its voxels
            side = np.zeros(canonical.shape, dtype=canonical.dtype)
            free = (labels > 0) & ~taken[box.slices]
            side[box.slices][free] = labels[free]
            taken[box.slices] |= free
            codes = volume.codes
            save_nifti(volume.native(side), volume.native_affine, outputs.native(box.side), codes)
            sides.append(box.side)
    if isinstance(outputs, BidsOutputs):
        if crop_input:
            save_nifti(
                volume.native(canonical), volume.native_affine, outputs.segmentation, volume.codes
            )
        write_dataset(outputs, names, models, description)
        write_sidecars(outputs, sides or ["crop"])
        write_text_atomic(outputs.volumes, wide_tsv(wide_rows(outputs, rows, names)))
        return
    write_volumes(rows, outputs.volumes)
    save_nifti(volume.native(canonical), volume.native_affine, outputs.segmentation, volume.codes)


def write_probabilities(
    outputs: Outputs, volume: Volume, box: Box, probabilities: np.ndarray
) -> Path:
    """One crop's mean class probabilities ``(C, X, Y, Z)`` as a 4D image, class last
    (background first), stored as uint8 with a scale slope of 1/255 (readers get floats
    in [0, 1]): on the input's grid for a crop input, else on the crop's grid."""
    scaled = np.rint(np.clip(probabilities, 0.0, 1.0) * 255).astype(np.uint8)
    if box.side == "crop":
        data = np.stack([volume.native(p) for p in scaled], axis=-1)
        affine, codes = volume.native_affine, volume.codes
    else:
        data, affine, codes = np.moveaxis(scaled, 0, -1), box.affine(volume.affine), (1, 1)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=codes[0])
    image.set_sform(affine, code=codes[1])
    image.header.set_slope_inter(1 / 255, 0)
    path = outputs.probabilities(box.side)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def _json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_sidecars(outputs: BidsOutputs, sides: Sequence[str]) -> None:
    """The JSON sidecar of each image of the subject (``Sources`` and
    ``SpatialReference``: the input, a BIDS URI into the ``raw`` dataset link)."""
    for side in sides:
        images = [(outputs.native(side), "Hippocampal subfields, on the input's grid")]
        probabilities = "Mean class probabilities (volume i: label i, 0 the background)"
        images.append((outputs.probabilities(side), probabilities))
        if side != "crop":
            crop = outputs.segmentation_crop(side)
            images.append((crop, "Hippocampal subfields, on the hippocampus crop's grid"))
            if outputs.image_crop(side).is_file():
                images.append((outputs.image_crop(side), "The input cropped to the hippocampus"))
        for path, text in images:
            if not path.is_file():
                continue
            sidecar: dict[str, Any] = {
                "Description": text,
                "Sources": [outputs.source],
                "SpatialReference": outputs.source,
            }
            if not path.name.endswith(("_dseg.nii.gz", "_probseg.nii.gz")):
                sidecar["SkullStripped"] = False
            _json(path.with_name(path.name.replace(".nii.gz", ".json")), sidecar)


def write_dataset(
    outputs: BidsOutputs, names: Sequence[str], models: Sequence[Path], description: str
) -> None:
    """``dataset_description.json``, ``dseg.tsv`` and ``.bidsignore`` of the derivatives
    dataset (rewritten with the same content by every subject of a run)."""
    root = outputs.root
    _json(
        root / "dataset_description.json",
        {
            "Name": "hsftrain hippocampal subfield segmentations",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": provenance.generated_by(models, description),
            "DatasetLinks": {"raw": outputs.raw},
        },
    )
    write_text_atomic(root / "dseg.tsv", luts.dseg_tsv(names))
    write_text_atomic(root / "README.md", README)
    write_text_atomic(root / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")


def wide_rows(
    outputs: BidsOutputs, rows: Sequence[dict[str, object]], names: Sequence[str]
) -> list[dict[str, object]]:
    """One row per side: ``participant_id``, ``session``, ``hemi``, the volume (mm3) of
    each class by name, the whole-hippocampus total, ``flag`` and the provenance."""
    out: dict[str, dict[str, object]] = {}
    totals: dict[str, float] = {}
    for row in rows:
        side = str(row["side"])
        wide = out.setdefault(
            side,
            {
                "participant_id": outputs.participant,
                "session": outputs.session or "n/a",
                "hemi": HEMI.get(side, "n/a"),
                **{n: 0.0 for i, n in enumerate(names) if i and n},
                TOTAL: 0.0,
                "flag": row.get("flag") or "n/a",
                **{k: row.get(k, "") for k in PROVENANCE},
            },
        )
        volume = float(row["volume_mm3"])  # type: ignore[arg-type]
        wide[str(row["name"])] = volume
        totals[side] = round(totals.get(side, 0.0) + volume, 6)
    for side, wide in out.items():  # a class named like the total is the whole hippocampus
        wide[TOTAL] = totals.get(side, 0.0)
    return list(out.values())


def wide_tsv(rows: Sequence[dict[str, object]]) -> str:
    """A TSV of ``rows`` (columns in first-seen order, ``flag`` and the provenance last,
    ``n/a`` where a row has none)."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    last = [c for c in ("flag", *PROVENANCE) if c in columns]
    columns = {**{c: None for c in columns if c not in last}, **dict.fromkeys(last)}
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(columns), delimiter="\t", lineterminator="\n", restval="n/a"
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_tsv(path: Path) -> list[dict[str, object]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))

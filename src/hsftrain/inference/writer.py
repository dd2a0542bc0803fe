"""Output names, volumes tables and quality-control figures of ``hsftrain segment``.

Outputs of an input ``<stem>.nii.gz`` (``<stem>`` = file name without its extension),
written into ``files.output_dir`` (mirroring the input's sub-folders below ``files.path``)
or, by default, next to the input:

================================================  ==========================================
``<stem>_hippocampus_seg.nii.gz``                 segmentation on the input's own grid
                                                  (shape, affine, orientation); written last:
                                                  its presence marks the subject finished
``<stem>_hippocampus_seg_<side>.nii.gz``          one side of a whole head on the input's
                                                  grid (the other side 0): the hemispheres
                                                  kept apart
``<stem>_hippocampus_probabilities[_crop_<side>]`` mean class probabilities (``.nii.gz``, 4D,
                                                  class last, uint8 with slope 1/255); only
                                                  with ``save_probabilities=true``
``<stem>_hippocampus_labels_{itksnap,freesurfer}.txt``  colour look-up tables of the labels
                                                  (ITK-SNAP label descriptions, FreeSurfer LUT)
``<stem>_hippocampus_crop_<side>.nii.gz``         the MRI crop (whole-head inputs only)
``<stem>_hippocampus_seg_crop_<side>.nii.gz``     segmentation of that crop
``<stem>_hippocampus_uncertainty[_crop_<side>]``  voxel-wise uncertainty (``.nii.gz``, float32
                                                  in [0, 1]); only when > 1 prediction fused
``<stem>_hippocampus_qc[_<side>].png``            three planes with the label overlay
``<stem>_hippocampus_volumes.csv``                this subject's rows of ``volumes.csv``
================================================  ==========================================

``<side>`` is ``left`` or ``right``; a crop input has a single side ``crop`` and no
``_<side>`` suffix (its segmentation *is* the native one). ``volumes.csv`` (one for the run,
in ``files.output_dir`` or ``files.path``) is rebuilt at the end of every run from the
per-subject tables, so resumed runs neither lose nor duplicate rows.
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hsftrain.core.atomic import write_text_atomic
from hsftrain.inference.image import atomic_path, strip_extension

#: Every file hsftrain segment writes contains this (used to skip our own outputs).
MARKER = "_hippocampus_"
#: ``flag``: empty for a normal result, else why it should not be trusted as it is (a poor
#: whole-head registration, an empty segmentation, ...), or ``failed: <why>`` on the single
#: row of a subject that could not be segmented (its volumes are left empty).
#: ``hsftrain_version``, ``models`` (``name:xxh3_64`` of each model, ``;``-separated) and
#: ``preset``: what made the row (:mod:`hsftrain.inference.provenance`).
VOLUME_COLUMNS: tuple[str, ...] = (
    "subject",
    "side",
    "label",
    "name",
    "volume_mm3",
    "voxel_count",
    "flag",
    "hsftrain_version",
    "models",
    "preset",
)


@dataclass(frozen=True)
class Outputs:
    """Paths of one input's outputs."""

    folder: Path
    stem: str

    def _path(self, kind: str, side: str | None, ext: str = ".nii.gz") -> Path:
        suffix = f"_{side}" if side and side != "crop" else ""
        return self.folder / f"{self.stem}_hippocampus_{kind}{suffix}{ext}"

    @property
    def segmentation(self) -> Path:
        return self.folder / f"{self.stem}_hippocampus_seg.nii.gz"

    @property
    def volumes(self) -> Path:
        return self.folder / f"{self.stem}_hippocampus_volumes.csv"

    @property
    def done(self) -> Path:
        """The file written last: its presence marks the subject finished."""
        return self.segmentation

    def native(self, side: str) -> Path:
        """One side of a whole head on the input's grid (a crop input: its segmentation)."""
        return self.segmentation if side == "crop" else self._path("seg", side)

    def probabilities(self, side: str) -> Path:
        return self._path("probabilities" if side == "crop" else "probabilities_crop", side)

    def lut(self, kind: str) -> Path:
        """A colour look-up table: ``itksnap`` (label description file) or ``freesurfer``."""
        return self.folder / f"{self.stem}_hippocampus_labels_{kind}.txt"

    def image_crop(self, side: str) -> Path:
        return self._path("crop", side)

    def segmentation_crop(self, side: str) -> Path:
        return self._path("seg_crop", side)

    def uncertainty(self, side: str) -> Path:
        if side == "crop":
            return self._path("uncertainty", None)
        return self._path("uncertainty_crop", side)

    def qc(self, side: str) -> Path:
        return self._path("qc", side, ".png")

    def stale_temporaries(self) -> list[Path]:
        """Temporary files a killed run may have left for this subject."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f".{self.stem}_hippocampus_*.hsftrain-tmp*"))


def outputs_for(mri: Path, root: Path, output_dir: str | Path | None) -> Outputs:
    """Where the outputs of ``mri`` (found under ``root``) go."""
    stem = strip_extension(mri.name)
    if not output_dir:
        return Outputs(mri.parent, stem)
    try:
        relative = mri.parent.relative_to(root)
    except ValueError:
        relative = Path()
    return Outputs(Path(output_dir).expanduser() / relative, stem)


def volume_rows(
    subject: str,
    side: str,
    label_map: np.ndarray,
    names: Sequence[str],
    voxel_volume_mm3: float,
    flag: str = "",
) -> list[dict[str, object]]:
    """One row per foreground class (also those with no voxel) of a label map, each with
    ``flag`` (see :data:`VOLUME_COLUMNS`)."""
    counts = np.bincount(label_map.ravel().astype(np.int64), minlength=len(names))
    rows = []
    for value, name in enumerate(names):
        if value == 0 or not name:
            continue
        n = int(counts[value]) if value < len(counts) else 0
        rows.append(
            {
                "subject": subject,
                "side": side,
                "label": value,
                "name": name,
                "volume_mm3": round(n * float(voxel_volume_mm3), 6),
                "voxel_count": n,
                "flag": flag,
            }
        )
    return rows


def failed_row(subject: str, reason: str) -> dict[str, object]:
    """The row of a subject that could not be segmented: no volumes, ``failed: reason``."""
    return {
        "subject": subject,
        "side": "",
        "label": "",
        "name": "",
        "volume_mm3": "",
        "voxel_count": "",
        "flag": f"failed: {' '.join(reason.split())}",
    }


def rows_to_csv(rows: Sequence[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=VOLUME_COLUMNS, lineterminator="\n", restval="", extrasaction="ignore"
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_volumes(rows: Sequence[dict[str, object]], path: Path) -> Path:
    """Write a volumes table atomically."""
    return write_text_atomic(path, rows_to_csv(rows))


def read_volumes(path: Path) -> list[dict[str, object]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


#: Overlay colours of labels 1, 2, ... (cycled).
QC_COLOURS = np.array(
    [
        [0.90, 0.10, 0.10],
        [0.10, 0.70, 0.10],
        [0.15, 0.35, 0.95],
        [0.95, 0.75, 0.10],
        [0.70, 0.20, 0.80],
        [0.10, 0.80, 0.80],
        [0.95, 0.45, 0.10],
        [0.55, 0.55, 0.55],
    ]
)


def legend_entries(
    label_map: np.ndarray, names: Sequence[str] | None = None
) -> list[tuple[int, str, tuple[float, float, float]]]:
    """``(value, name, rgb)`` of every foreground class of a QC figure: each named class
    (``names[value]``, empty names skipped) and any other value present in ``label_map``."""
    values = {int(v) for v in np.unique(label_map) if v > 0}
    named = {i: str(n) for i, n in enumerate(names or []) if i > 0 and n}
    out = []
    for value in sorted(values | set(named)):
        rgb = QC_COLOURS[(value - 1) % len(QC_COLOURS)]
        out.append((value, named.get(value, f"label {value}"), tuple(float(c) for c in rgb)))
    return out  # type: ignore[return-value]


#: Size (pixels) of the longest side of a QC panel, and the overlay's opacity.
QC_PANEL_PX = 260
QC_ALPHA = 0.45


@functools.cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=12)


def _panel(
    image: np.ndarray, labels: np.ndarray, lo: float, hi: float, mm: tuple[float, float], px: float
) -> Image.Image:
    """One plane as RGB pixels: ``(H, V)`` arrays shown with H to the right and V upwards,
    ``px`` pixels a mm (nearest voxel), labels overlaid."""
    scale = (hi - lo) or 1.0
    grey = np.clip((image.astype(np.float32) - lo) / scale, 0.0, 1.0)[..., None] * np.ones(3)
    rgb = np.where(
        (labels > 0)[..., None],
        (1 - QC_ALPHA) * grey + QC_ALPHA * QC_COLOURS[(labels.astype(np.int64) - 1) % 8],
        grey,
    )
    pixels = np.ascontiguousarray(np.flipud(rgb.transpose(1, 0, 2)) * 255 + 0.5).astype(np.uint8)
    extent = np.asarray(labels.shape, dtype=float) * np.asarray(mm, dtype=float)
    width, height = np.maximum(1, extent * px).round()
    return Image.fromarray(pixels, "RGB").resize(
        (int(width), int(height)), Image.Resampling.NEAREST
    )


def save_qc(
    image: np.ndarray,
    label_map: np.ndarray,
    zooms: Sequence[float],
    path: Path,
    title: str = "",
    names: Sequence[str] | None = None,
) -> Path:
    """Sagittal, coronal and axial slices through the labels' centre, labels overlaid, and
    a legend naming each label's colour (:func:`legend_entries`). Drawn with Pillow pixel
    by pixel (a few milliseconds a crop): nearest-voxel panels, stretched to the voxel size.

    Args:
        image: ``(X, Y, Z)`` canonical (RAS) intensities.
        label_map: ``(X, Y, Z)`` integer labels on the same grid.
        names: class names indexed by label value (``names[0]`` is the background).
    """
    fg = np.argwhere(label_map > 0)
    centre = fg.mean(axis=0).round().astype(int) if len(fg) else np.asarray(image.shape) // 2
    entries = legend_entries(label_map, names)
    x, y, z = (float(v) for v in zooms)
    views = [
        ("sagittal", image[centre[0]], label_map[centre[0]], (y, z)),
        ("coronal", image[:, centre[1]], label_map[:, centre[1]], (x, z)),
        ("axial", image[:, :, centre[2]], label_map[:, :, centre[2]], (x, y)),
    ]
    lo, hi = (float(v) for v in np.percentile(image, [1, 99.5])) if image.size else (0.0, 1.0)
    extent = max(max(a.shape[0] * mm[0], a.shape[1] * mm[1]) for _, a, _, mm in views)
    px = QC_PANEL_PX / max(extent, 1e-6)  # one scale for the three planes
    panels = [_panel(img, lab, lo, hi, mm, px) for _, img, lab, mm in views]
    font = _font()
    gap, top = 20, 44 if title else 26
    legend_h = 28 if entries else 0
    width = max(900, sum(p.width for p in panels) + gap * 4)
    height = top + max(p.height for p in panels) + 10 + legend_h
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((width / 2, 6), title, fill="black", font=font, anchor="mt")
    slot = width / 3
    for i, ((name, *_), panel) in enumerate(zip(views, panels, strict=True)):
        left = int(slot * i + (slot - panel.width) / 2)
        draw.text((left + panel.width / 2, top - 4), name, fill="black", font=font, anchor="mb")
        canvas.paste(panel, (left, top))
    if entries:
        labels_text = [f"{v} {n}" for v, n, _ in entries]
        sizes = [int(draw.textlength(t, font=font)) + 34 for t in labels_text]
        cursor = (width - sum(sizes)) / 2
        base = height - legend_h / 2
        for (_, _, rgb), text, size in zip(entries, labels_text, sizes, strict=True):
            colour = tuple(int(255 * ((1 - 0.7) + 0.7 * c) + 0.5) for c in rgb)
            draw.rectangle((cursor, base - 6, cursor + 16, base + 6), fill=colour)
            draw.text((cursor + 22, base), text, fill="black", font=font, anchor="lm")
            cursor += size
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="png", compress_level=1)
    return path

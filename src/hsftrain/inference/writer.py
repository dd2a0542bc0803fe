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
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hsftrain.files import write_text_atomic
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


def _mpl_config() -> None:
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "hsftrain-matplotlib"))


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


def save_qc(
    image: np.ndarray,
    label_map: np.ndarray,
    zooms: Sequence[float],
    path: Path,
    title: str = "",
    names: Sequence[str] | None = None,
) -> Path:
    """Sagittal, coronal and axial slices through the labels' centre, labels overlaid, and
    a legend naming each label's colour (:func:`legend_entries`).

    Args:
        image: ``(X, Y, Z)`` canonical (RAS) intensities.
        label_map: ``(X, Y, Z)`` integer labels on the same grid.
        names: class names indexed by label value (``names[0]`` is the background).
    """
    _mpl_config()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fg = np.argwhere(label_map > 0)
    centre = fg.mean(axis=0).round().astype(int) if len(fg) else np.asarray(image.shape) // 2
    entries = legend_entries(label_map, names)
    n_labels = max([int(label_map.max()), 1, *(v for v, _, _ in entries)])
    colours = np.vstack([[0, 0, 0], QC_COLOURS[np.arange(n_labels) % len(QC_COLOURS)]])
    cmap = ListedColormap(colours)
    views = [
        ("sagittal", image[centre[0]], label_map[centre[0]], zooms[2] / zooms[1]),
        ("coronal", image[:, centre[1]], label_map[:, centre[1]], zooms[2] / zooms[0]),
        ("axial", image[:, :, centre[2]], label_map[:, :, centre[2]], zooms[1] / zooms[0]),
    ]
    lo, hi = np.percentile(image, [1, 99.5]) if image.size else (0, 1)
    fig = Figure(figsize=(9, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, img, lab, aspect) in enumerate(views):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(img.T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect)
        overlay = np.ma.masked_equal(lab.T, 0)
        ax.imshow(
            overlay, cmap=cmap, origin="lower", vmin=0, vmax=n_labels, alpha=0.45, aspect=aspect
        )
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    if entries:
        handles = [Patch(color=rgb, alpha=0.7, label=f"{v} {n}") for v, n, rgb in entries]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 8),
            fontsize=8,
            frameon=False,
        )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path

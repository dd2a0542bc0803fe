"""One subject of ``hsftrain segment``: read, locate, segment each crop, write.

For each MRI: read it (canonical RAS), decide whether it is already a hippocampus crop or
a whole head (``roiloc.mode``), locate and crop both hippocampi in a whole head, segment
each crop (:class:`~hsftrain.inference.segmenter.Segmenter`; with its T2 too in a
multispectral run, :mod:`hsftrain.inference.multispectral`), and write the results (see
:mod:`hsftrain.inference.writer` for the file names) on the input's own grid, the native
segmentation last: its presence marks the subject finished.

Everything a subject's result depends on comes from the subject's own files and the
settings: the test-time augmentations are seeded by ``seed`` and the side only, so the
order subjects are processed in, the shard or the worker process that takes them, and the
file's name change nothing.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hsftrain.inference.boxes import model_field_of_view
from hsftrain.inference.contract import asymmetry_flag
from hsftrain.inference.image import InputError, Volume, load_volume, save_nifti
from hsftrain.inference.resample import Plan, differs, plan, resample
from hsftrain.inference.results import ModelsUsed, write_probabilities, write_results
from hsftrain.inference.roiloc import Box, is_crop, localize
from hsftrain.inference.segmenter import CropResult, ProgressHook, Segmenter
from hsftrain.inference.settings import Settings
from hsftrain.inference.writer import Outputs, save_qc, volume_rows

log = logging.getLogger(__name__)


@dataclass
class SubjectReport:
    """What happened to one MRI (one row of the run's summary)."""

    subject: str
    mri: Path
    status: str  # done | flagged | skipped | failed
    seconds: float = 0.0
    sides: list[str] = field(default_factory=list)
    volumes_mm3: dict[str, float] = field(default_factory=dict)
    error: str = ""
    flags: list[str] = field(default_factory=list)
    outputs: Any = None  # where its files are (writer.Outputs or layout.BidsOutputs)


class CropMethod(Protocol):
    """How each crop of a subject is segmented (plain, or T1 + T2)."""

    flags: list[str]

    def segment_box(self, volume: Volume, box: Box, bar: ProgressHook | None) -> CropResult:
        """The fused segmentation of ``volume.array[box.slices]``, on that crop's grid."""
        ...

    def finish(self, volume: Volume, canonical: np.ndarray) -> None:
        """Called once every crop is segmented, before the native segmentation is written."""
        ...


def side_rng(seed: int, side: str) -> np.random.Generator:
    """The TTA random generator of one crop: from ``seed`` and the side only, never the
    file's name or orientation, so that the same image gives the same volumes however its
    file is named or its axes are stored."""
    return np.random.default_rng([seed, zlib.crc32(side.encode())])


def working_grid(
    image: np.ndarray, zooms: Any, segmenter: Segmenter, settings: Settings, where: str
) -> Plan | None:
    """The grid a crop is segmented on when its voxel size is far from the models' (None:
    its own grid)."""
    spacing = segmenter.spacing
    if settings.resample_mode == "off" or not differs(zooms, spacing, settings.resample_tolerance):
        return None
    sizes = "x".join(f"{z:.2g}" for z in zooms)
    model = "x".join(f"{z:.2g}" for z in spacing or ())
    if settings.resample_mode == "warn":
        log.warning(
            "%s: voxel size %s mm, the model was trained at %s mm: segmenting as it is "
            "(resample.mode=auto resamples to the model's voxel size and back)",
            where,
            sizes,
            model,
        )
        return None
    target = plan(image.shape, zooms, spacing)  # type: ignore[arg-type]
    log.info(
        "%s: voxel size %s mm, the model was trained at %s mm: segmenting on a %s grid, "
        "result mapped back (resample.mode=warn to segment as it is)",
        where,
        sizes,
        model,
        "x".join(map(str, target.shape)),
    )
    return target


class PlainCrops:
    """Each crop segmented by one :class:`Segmenter` (on the models' voxel size when its
    own differs, :func:`working_grid`)."""

    def __init__(self, segmenter: Segmenter, settings: Settings, subject: str) -> None:
        self.segmenter = segmenter
        self.settings = settings
        self.subject = subject
        self.flags: list[str] = []

    def segment_box(self, volume: Volume, box: Box, bar: ProgressHook | None) -> CropResult:
        image = volume.array[box.slices]
        segmenter = self.segmenter
        if bar:
            bar.start(f"{self.subject} {box.side}", segmenter.predictions_per_crop)
        where = f"{self.subject} {box.side}"
        grid = working_grid(image, volume.zooms, segmenter, self.settings, where)
        result = segmenter.segment_crop(
            resample(image, grid.shape, 1) if grid else image,
            grid.zooms if grid else volume.zooms,
            side_rng(self.settings.seed, box.side),
            bar.advance if bar else None,
        )
        if grid:
            result = CropResult(
                resample(result.label_map, image.shape, 0),
                None
                if result.uncertainty is None
                else resample(result.uncertainty, image.shape, 1),
                result.n_predictions,
                None
                if result.probabilities is None
                else np.stack([resample(p, image.shape, 1) for p in result.probabilities]),
            )
        return result

    def finish(self, volume: Volume, canonical: np.ndarray) -> None:
        return None


def locate(
    volume: Volume, settings: Settings, field_of_view_mm: tuple[float, float, float] | None = None
) -> tuple[list[Box], str]:
    """The crops of ``volume`` (the whole image for a crop input, else both hippocampi,
    sized to the models' training ``field_of_view_mm`` when known) and why the whole-head
    localisation looks wrong ("" when it looks fine)."""
    roiloc = settings.roiloc
    if is_crop(volume, str(roiloc.get("mode", "auto")), float(roiloc.get("crop_max_fov_mm", 80))):
        return [Box("crop", (0, 0, 0), volume.array.shape)], ""
    found = localize(volume, roiloc, settings.seed, field_of_view_mm)
    return found.boxes, found.problem


def image_problem(array: np.ndarray) -> str:
    """Why an image holds nothing to segment: constant, or nearly (99% of its voxels one
    value); "" otherwise."""
    if not array.size:
        return "is empty"
    lo, hi = float(array.min()), float(array.max())
    if hi - lo <= 0:
        return f"is constant (every voxel is {lo:g})"
    p_lo, p_hi = (float(v) for v in np.percentile(array, [0.5, 99.5]))
    if p_hi - p_lo <= 1e-6 * max(abs(p_lo), abs(p_hi), 1.0):
        return f"is nearly constant (99% of its voxels are {p_lo:g})"
    return ""


def read_checked(mri: Path) -> Volume:
    """Read an MRI and refuse one with nothing to segment.

    Raises:
        InputError: unreadable, non-3D, constant or nearly constant input.
    """
    volume = load_volume(mri)
    problem = image_problem(volume.array)
    if problem:
        raise InputError(
            f"{mri}: the image {problem}: there is nothing to segment; check the file, or "
            "leave it out with files.mask_pattern"
        )
    return volume


def segment_subject(
    mri: Path,
    outputs: Outputs,
    subject: str,
    segmenter: Segmenter,
    settings: Settings,
    bar: ProgressHook | None = None,
    method: CropMethod | None = None,
) -> SubjectReport:
    """Segment one MRI and write its outputs (the native segmentation last).

    Results that should not be trusted as they are (NaN voxels in the input, a poor
    whole-head registration, a crop where no hippocampus was found, a multispectral T2
    missing or poorly registered, a crop or result unlike the models' training data:
    :mod:`hsftrain.inference.contract`) are written with the reason in the ``flag`` column
    of their volumes and the status ``flagged``.

    Args:
        method: how each crop is segmented (default: :class:`PlainCrops` with
            ``segmenter``).

    Raises:
        InputError: unreadable, non-3D, constant or nearly constant input, or a constant
            crop (before anything is written).
    """
    start = time.perf_counter()
    for stale in outputs.stale_temporaries():
        stale.unlink(missing_ok=True)
    volume, boxes, flags = _read_and_locate(mri, segmenter, settings)
    run = _SubjectRun(
        subject,
        outputs,
        volume,
        segmenter,
        settings,
        method or PlainCrops(segmenter, settings, subject),
        boxes,
        flags,
        SubjectReport(subject, mri, "done", flags=list(flags)),
    )
    canonical = np.zeros(volume.array.shape, dtype=np.uint8)
    rows: list[dict[str, object]] = []
    placed: list[tuple[Box, np.ndarray]] = []
    for box in boxes:
        labels, side_rows = run.segment_side(box, bar)
        rows += side_rows
        region = canonical[box.slices]
        free = (labels > 0) & (region == 0)  # overlapping boxes: the first side keeps its labels
        region[free] = labels[free]
        placed.append((box, labels))
    report = run.report
    report.flags += [f for f in dict.fromkeys(run.method.flags) if f not in report.flags]
    asymmetry = asymmetry_flag(report.volumes_mm3, settings.checks)
    if asymmetry:  # a flag of the head: on the rows of both sides
        report.flags.append(asymmetry)
        for row in rows:
            row["flag"] = "; ".join(f for f in (str(row["flag"]), asymmetry) if f)
    run.method.finish(volume, canonical)
    models = [engine.path for engine in segmenter.engines]
    used = ModelsUsed(segmenter.names, models, settings.description)
    write_results(outputs, volume, canonical, placed, rows, used)
    report.seconds = time.perf_counter() - start
    if report.flags:
        report.status = "flagged"
        log.warning("%s: flagged: %s", mri, "; ".join(report.flags))
    return report


def _read_and_locate(
    mri: Path, segmenter: Segmenter, settings: Settings
) -> tuple[Volume, list[Box], list[str]]:
    """The checked image, its hippocampus boxes and the flags of the whole image.

    Raises:
        InputError: unreadable or unusable input, or a box that missed the head.
    """
    volume = read_checked(mri)
    flags = []
    if volume.nonfinite_voxels:
        flags.append(f"{volume.nonfinite_voxels} NaN/Inf voxels read as 0")
    boxes, where = locate(volume, settings, model_field_of_view(segmenter.engines))
    if where:
        flags.append(where)
    for box in boxes:
        problem = image_problem(volume.array[box.slices])
        if problem and box.side != "crop":
            raise InputError(
                f"{mri}: the {box.side} hippocampus crop {problem}: the box missed the "
                "head; check the image and the roiloc settings (roiloc.mode=crop for crops)"
            )
    return volume, list(boxes), flags


@dataclass
class _SubjectRun:
    """One subject being segmented: what each side's step needs."""

    subject: str
    outputs: Outputs
    volume: Volume
    segmenter: Segmenter
    settings: Settings
    method: CropMethod
    boxes: list[Box]
    flags: list[str]
    report: SubjectReport

    @property
    def crop_input(self) -> bool:
        return self.boxes[0].side == "crop"

    @property
    def voxel_mm3(self) -> float:
        return float(abs(np.linalg.det(self.volume.affine[:3, :3])))

    def segment_side(
        self, box: Box, bar: ProgressHook | None
    ) -> tuple[np.ndarray, list[dict[str, object]]]:
        """Segment ``box``, write its crop files, flag it; its label map and volume rows."""
        volume, report = self.volume, self.report
        image = volume.array[box.slices]
        result = self.method.segment_box(volume, box, bar)
        labels = result.label_map
        self._write_side(box, image, result)
        others = [f"{b.side} crop" for b in self.boxes if b.side != box.side]  # their own flags
        side_flags = self.flags + [f for f in self.method.flags if not any(o in f for o in others)]
        if not (labels > 0).any():
            side_flags.append(f"no hippocampus found in the {box.side} crop")
            report.flags.append(side_flags[-1])
        contract, checks = self.segmenter.contract, self.settings.checks
        where = "crop" if self.crop_input else f"{box.side} crop"
        names, voxel_mm3 = self.segmenter.names, self.voxel_mm3
        checked = [contract.contrast_flag(image, volume.zooms, checks, where)]
        checked += contract.crop_flags(labels, result.uncertainty, names, voxel_mm3, checks, where)
        side_flags += [f for f in checked if f]
        report.flags += [f for f in checked if f]
        side_rows = volume_rows(
            self.subject, box.side, labels, names, voxel_mm3, "; ".join(side_flags)
        )
        report.sides.append(box.side)
        report.volumes_mm3[box.side] = float(sum(float(r["volume_mm3"]) for r in side_rows))  # type: ignore[arg-type,misc]
        return labels, side_rows

    def _write_side(self, box: Box, image: np.ndarray, result: CropResult) -> None:
        """The crop's files: probabilities, image and label crops, uncertainty, QC figure."""
        volume, outputs, settings = self.volume, self.outputs, self.settings
        labels = result.label_map
        affine = box.affine(volume.affine)
        if result.probabilities is not None:
            write_probabilities(outputs, volume, box, result.probabilities)
        if not self.crop_input:
            if settings.save_crops:
                save_nifti(image.astype(np.float32), affine, outputs.image_crop(box.side))
            save_nifti(labels, affine, outputs.segmentation_crop(box.side))
        if result.uncertainty is not None:
            if self.crop_input:
                save_nifti(
                    volume.native(result.uncertainty),
                    volume.native_affine,
                    outputs.uncertainty(box.side),
                    volume.codes,
                )
            else:
                save_nifti(result.uncertainty, affine, outputs.uncertainty(box.side))
        if settings.qc:
            save_qc(
                image,
                labels,
                volume.zooms,
                outputs.qc(box.side),
                f"{self.subject} ({box.side})",
                self.segmenter.names,
            )

"""One subject, whatever the mode: :func:`run_subject` picks the crop method (the T1's own
crops, or a multispectral T1+T2 run), calls :func:`hsftrain.inference.pipeline.segment_subject`
and turns any failure into a ``failed`` report with a one-line reason, so that a cohort run
goes on with the other subjects. Used by one process and by the worker processes alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hsftrain.core.errors import UserError
from hsftrain.inference.multispectral import T1T2Crops
from hsftrain.inference.pipeline import CropMethod, SubjectReport, segment_subject
from hsftrain.inference.segmenter import ProgressHook, Segmenter
from hsftrain.inference.settings import Settings
from hsftrain.inference.writer import Outputs

log = logging.getLogger(__name__)


def failure_line(mri: Path, err: Exception) -> str:
    """One line saying why ``mri`` failed: the error's own message (naming the file) for
    a user error; for anything else its type too, and what to try for out-of-memory."""
    from hsftrain.core.errors import is_out_of_memory

    text = " ".join(str(err).split())
    if not isinstance(err, UserError | OSError):
        hint = (
            ": out of memory, try hardware.engine_settings.batch_size=1, fewer "
            "hardware.jobs or fewer models/views"
            if is_out_of_memory(err)
            else " (internal error: a bug, please report it with the traceback)"
        )
        text = f"{type(err).__name__}: {text}{hint}"
    return text if str(mri) in text else f"{mri}: {text}"


@dataclass(frozen=True)
class Job:
    """One subject to segment.

    ``entities``: for a BIDS input (``files.bids=true``), the entities of ``mri``'s file
    name as :func:`hsftrain.inference.bids.parse_entities` gives them (``sub``, ``ses``
    when the dataset has sessions, ``acq``, ``run``, ... in file-name order, then
    ``suffix``, e.g. ``"T1w"``, and ``extension``, e.g. ``".nii.gz"``); None for a
    folder + glob input."""

    mri: Path
    outputs: Outputs
    subject: str
    t2_candidates: tuple[Path, ...] = ()
    entities: dict[str, str] | None = None


def run_subject(
    job: Job,
    segmenter: Segmenter,
    settings: Settings,
    bar: ProgressHook | None = None,
    t2_segmenter: Segmenter | None = None,
) -> SubjectReport:
    """:func:`segment_subject` (multispectral when ``settings.multispectral``), with any
    failure turned into a ``failed`` report (logged; internal errors with their
    traceback) so that the run goes on with the other subjects."""
    mri, outputs, subject = job.mri, job.outputs, job.subject
    try:
        method: CropMethod | None = None
        if settings.multispectral is not None:
            method = T1T2Crops.for_subject(
                mri,
                outputs,
                subject,
                segmenter,
                t2_segmenter or segmenter,
                settings,
                list(job.t2_candidates),
            )
        report = segment_subject(mri, outputs, subject, segmenter, settings, bar, method)
        report.outputs = outputs
        return report
    except Exception as err:  # keep going: report every failure at the end
        report = SubjectReport(
            subject, mri, "failed", error=failure_line(mri, err), outputs=outputs
        )
        internal = not isinstance(err, UserError | OSError)
        log.error("%s", report.error, exc_info=internal)
        return report

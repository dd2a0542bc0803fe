"""``hsftrain segment``: segment every MRI matching ``files.path``/``files.pattern``.

The run, in order: check the configuration (:mod:`~hsftrain.inference.settings`), find
the MRIs (:mod:`~hsftrain.inference.discovery`; with ``files.t2_pattern``, each T1's T2;
a BIDS dataset with ``files.bids``: :mod:`~hsftrain.inference.bids`),
keep this shard's block of them (:mod:`~hsftrain.inference.shards`), skip the finished
ones, segment the rest (:mod:`~hsftrain.inference.pipeline`, in this process or in
``hardware.jobs`` worker processes, :mod:`~hsftrain.inference.workers`), then rebuild the
volumes table and print the summary (:mod:`~hsftrain.inference.reporting`).

A subject whose native segmentation already exists is skipped unless ``files.overwrite``.
A subject that fails (corrupt or 4D file, ...) is logged with its file name and the run
goes on; failures are listed at the end and :func:`segment` then raises
:class:`SegmentError` (the command exits with status 1). SIGTERM or Ctrl+C stops the run
once the subjects in progress are written: the volumes table lists the finished ones and
:class:`~hsftrain.core.errors.Interrupted` says how many are left (exit 143 / 130); rerunning
the same command segments the rest.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hsftrain.config.compose import ConfigError
from hsftrain.core.errors import Interrupted, StopRequest, signal_name, stop_on_signals
from hsftrain.inference.bids import find_bids_mris
from hsftrain.inference.boxes import model_field_of_view
from hsftrain.inference.discovery import find_mris, pair_t2, subject_name
from hsftrain.inference.layout import outputs_of
from hsftrain.inference.pipeline import (
    SubjectReport,
    image_problem,
    locate,
    segment_subject,
)
from hsftrain.inference.reporting import SegmentError, raise_failures, rebuild_volumes, summary
from hsftrain.inference.segmenter import (
    CropResult,
    ProgressHook,
    Segmenter,
    load_engines,
    resolve_models,
)
from hsftrain.inference.settings import Settings, settings_from_config
from hsftrain.inference.shards import merge_if_complete
from hsftrain.inference.subject import Job, run_subject
from hsftrain.inference.workers import run_parallel
from hsftrain.inference.writer import outputs_for

__all__ = [
    "CropResult",
    "SegmentError",
    "Segmenter",
    "Settings",
    "SubjectReport",
    "find_mris",
    "image_problem",
    "load_engines",
    "locate",
    "outputs_for",
    "segment",
    "segment_subject",
    "settings_from_config",
    "subject_name",
]

log = logging.getLogger(__name__)


def _jobs(settings: Settings) -> tuple[list[SubjectReport], list[Job], int]:
    """Skipped reports and the subjects left to segment, of this run's (shard's) MRIs,
    in the sorted order; and how many MRIs the whole run found."""
    if settings.layout == "bids" and settings.shard is not None:
        raise ConfigError(
            f"files.shard={settings.shard}: a sharded run writes the HSF volumes tables; use "
            "files.layout=hsf, or files.shard=off for BIDS derivatives"
        )
    if settings.save_probabilities and settings.multispectral is not None:
        raise ConfigError(
            "save_probabilities=true is not available for a multispectral run (T1 + T2 "
            "fused): no probability map is kept; use save_probabilities=false, or segment "
            "the T1s alone"
        )
    entities: dict[Path, dict[str, str]] = {}
    t2s: dict[Path, list[Path]] = {}
    if settings.bids is not None:
        found, t2s = find_bids_mris(settings.root, settings.bids)
        entities = dict(found)
        mris = list(entities)
    else:
        mris = find_mris(settings.root, settings.pattern, settings.mask_patterns)
    if settings.multispectral is not None and settings.bids is None:
        mris, t2s = pair_t2(mris, settings.pattern, settings.multispectral.t2_pattern)
    total = len(mris)
    if settings.shard is not None:
        start, stop = settings.shard.bounds(total)
        mris = settings.shard.select(mris)
        log.info(
            "shard %s: MRIs %d to %d of the %d found (sorted), volumes in %s",
            settings.shard,
            start + 1,
            stop,
            total,
            settings.table.name,
        )
    skipped: list[SubjectReport] = []
    todo: list[Job] = []
    for mri in mris:
        where = (settings.root, settings.output_dir, settings.layout, entities.get(mri))
        outputs = outputs_of(mri, *where)
        subject = subject_name(mri, settings.root)
        if outputs.done.is_file() and not settings.overwrite:
            log.info("%s: already segmented (%s), skipping", mri, outputs.done.name)
            skipped.append(SubjectReport(subject, mri, "skipped", outputs=outputs))
        else:
            todo.append(Job(mri, outputs, subject, tuple(t2s.get(mri, ())), entities.get(mri)))
    log.info(
        "%d MRI(s) found under %s%s: %d to segment, %d already done",
        len(mris),
        settings.root,
        f" (shard {settings.shard})" if settings.shard else "",
        len(todo),
        len(skipped),
    )
    return skipped, todo, total


def _segmenters(
    settings: Settings, paths: list[Path], t2_paths: list[Path] | None, threads: int | None
) -> tuple[Segmenter, Segmenter | None]:
    """The run's segmenter, and the T2's when it has its own models (checked to give the
    same classes).

    Raises:
        ConfigError: models that cannot be used together.
        ModelError: a model that cannot be used.
    """
    segmenter = Segmenter.from_settings(load_engines(settings, paths, threads), settings)
    model_field_of_view(segmenter.engines)  # a malformed field_of_view_mm: before any subject
    log.info(
        "%d model(s) x %d view(s) (test_time_num_aug=%d), fusion=%s, ca_mode=%r, classes %s",
        len(segmenter.engines),
        1 + settings.num_aug,
        settings.num_aug,
        settings.fusion,
        settings.ca_mode,
        [n for n in segmenter.names if n],
    )
    t2_segmenter = None
    if t2_paths is not None and settings.multispectral is not None:
        from hsftrain.inference.multispectral import check_same_classes

        t2_models = settings.multispectral.t2_models or []
        t2_engines = load_engines(settings, t2_paths, threads, models=t2_models)
        t2_segmenter = Segmenter.from_settings(t2_engines, settings)
        check_same_classes(segmenter, t2_segmenter)
    return segmenter, t2_segmenter


def _progress() -> Any:
    """The progress display of a run (subjects, and predictions of the current crop)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )


def _run_here(
    todo: list[Job],
    settings: Settings,
    paths: list[Path],
    t2_paths: list[Path] | None,
    stop: StopRequest,
) -> list[SubjectReport]:
    """Segment ``todo`` one after the other in this process, with progress bars, until
    ``stop`` holds a signal (checked between subjects)."""
    segmenter, t2_segmenter = _segmenters(settings, paths, t2_paths, None)
    reports = []
    with _progress() as progress:
        subjects_task = progress.add_task("subjects", total=len(todo))
        hook = ProgressHook(progress, progress.add_task("predictions", total=None))
        for job in todo:
            if stop.signum is not None:
                break
            report = run_subject(job, segmenter, settings, hook, t2_segmenter)
            reports.append(report)
            progress.advance(subjects_task)
    return reports


def _run_workers(
    todo: list[Job],
    settings: Settings,
    paths: list[Path],
    t2_paths: list[Path] | None,
    stop: StopRequest,
) -> list[SubjectReport]:
    """Segment ``todo`` in ``hardware.jobs`` worker processes, with a subjects bar, until
    ``stop`` holds a signal."""
    # load every model once here, before any worker starts: a bad model is one clear error
    checked = _segmenters(settings, paths, t2_paths, threads=1)
    del checked
    with _progress() as progress:
        task = progress.add_task("subjects", total=len(todo))
        return run_parallel(todo, settings, paths, t2_paths, lambda _: progress.advance(task), stop)


def segment(cfg: DictConfig) -> list[Path]:
    """Segment every MRI matching ``files.path``/``files.pattern`` (the HSF workflow).

    Returns:
        the native-space segmentation of every finished subject (segmented now or skipped
        because already done) of this run (this shard), in the order the files were found.

    Raises:
        ConfigError: invalid configuration (names the key).
        FileNotFoundError: no MRI matches ``files.pattern`` under ``files.path``.
        SegmentError: some subjects failed (the others are written).
        Interrupted: SIGTERM or SIGINT: the subjects in progress were finished (abandoned
            on a second Ctrl+C) and the volumes table lists the finished ones.
    """
    settings = settings_from_config(cfg)
    reports, todo, _ = _jobs(settings)
    with _stoppable() as stop:
        reports += _segment_todo(todo, settings, stop)
    if stop.signum is not None:
        _stopped(reports, len(todo), settings, stop.signum)
    reports.sort(key=lambda r: r.mri)  # the order the MRIs were found in (sorted paths)
    table = settings.table
    volumes = rebuild_volumes(
        reports, settings.root, settings.output_dir, table, always=settings.shard is not None
    )
    if settings.shard is not None:
        volumes = merge_if_complete(settings.shard, settings.volumes_csv) or volumes
    summary(reports, volumes)
    raise_failures(reports, table)
    return [(r.outputs or outputs_for(r.mri, settings.root, None)).done for r in reports]


def _segment_todo(todo: list[Job], settings: Settings, stop: StopRequest) -> list[SubjectReport]:
    """Segment the subjects left to do (in this process or in workers)."""
    reports: list[SubjectReport] = []
    if todo:
        views = 1 + settings.num_aug
        log.info(
            "about to run %d model(s) x %d view(s) = %d predictions per crop (%s)",
            len(settings.models),
            views,
            len(settings.models) * views,
            settings.description or "segmentation.models",
        )
        paths = resolve_models(settings.models, settings.models_path)
        multispectral = settings.multispectral
        t2_paths = None
        if multispectral is not None and multispectral.t2_models:
            t2_paths = resolve_models(multispectral.t2_models, settings.models_path)
        if settings.jobs > 1 and len(todo) > 1:
            reports += _run_workers(todo, settings, paths, t2_paths, stop)
        else:
            reports += _run_here(todo, settings, paths, t2_paths, stop)
    return reports


@contextlib.contextmanager
def _stoppable() -> Iterator[StopRequest]:
    """SIGTERM / SIGINT stop the run once the subjects in progress are written; a second
    Ctrl+C stops at once (:class:`Interrupted`, the workers killed and reaped)."""
    with stop_on_signals(
        "stopping once the subject(s) in progress are written",
        at_once="Ctrl+C again to stop at once, abandoning them",
    ) as stop:
        try:
            yield stop
        except KeyboardInterrupt as err:
            if not stop.forced:
                raise
            raise Interrupted(
                "SIGINT: segment stopped at once (a second Ctrl+C), abandoning the subjects "
                "in progress (they are redone next time); rerun the same command to segment "
                "the rest (finished subjects are skipped)",
                signal.SIGINT,
            ) from err


def _stopped(reports: list[SubjectReport], todo: int, settings: Settings, signum: int) -> None:
    """After a stop: the volumes table of the finished subjects (not a shard's table, which
    says that the shard is complete), the summary, and :class:`Interrupted`.

    Raises:
        Interrupted: always.
    """
    reports.sort(key=lambda r: r.mri)
    now = len(reports) - sum(r.status == "skipped" for r in reports)
    volumes = None
    if settings.shard is None:
        volumes = rebuild_volumes(reports, settings.root, settings.output_dir, settings.table)
    summary(reports, volumes)
    if volumes is not None:
        kept = f"{volumes} holds the {len(reports)} MRI(s) done so far"
    elif settings.shard is not None:
        kept = f"{settings.table.name} is written once the shard is complete"
    else:
        kept = "no MRI was finished, so no volumes table was written"
    raise Interrupted(
        f"{signal_name(signum)}: segment stopped with {todo - now} of the {todo} MRI(s) to "
        f"segment left; {kept}. Rerun the same command to segment the rest (finished "
        "subjects are skipped)",
        signum,
    )

"""The end of a ``segment`` run: the volumes table and the summary."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hsftrain.core.atomic import write_text_atomic
from hsftrain.core.errors import UserError
from hsftrain.inference.layout import BidsOutputs
from hsftrain.inference.pipeline import SubjectReport
from hsftrain.inference.results import read_tsv, wide_tsv
from hsftrain.inference.writer import failed_row, outputs_for, read_volumes, write_volumes

log = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("done", "flagged", "skipped", "failed")


class SegmentError(UserError, RuntimeError):
    """Some subjects could not be segmented (the message lists them and why)."""


def rebuild_volumes(
    reports: Sequence[SubjectReport],
    root: Path,
    output_dir: Path | None,
    table: Path,
    always: bool = False,
) -> Path | None:
    """Gather the per-subject tables of every finished subject, in the order of
    ``reports``, into ``table``, and one ``failed: <why>`` row (no volumes) per failed
    subject (BIDS layout: the wide ``_volumes.tsv`` rows, into a TSV). Returns ``table``, or None when there is no row (unless ``always``: a shard
    writes its table even when it has no subject, so that the merge knows it is done)."""
    rows: list[dict[str, object]] = []
    bids = any(isinstance(r.outputs, BidsOutputs) for r in reports)
    for report in reports:
        outputs = report.outputs or outputs_for(report.mri, root, output_dir)
        if report.status == "failed":
            row = failed_row(report.subject, report.error)
            if isinstance(outputs, BidsOutputs):
                session = outputs.session or "n/a"
                row = {"participant_id": outputs.participant, "session": session}
                row |= {"hemi": "n/a", "flag": failed_row(report.subject, report.error)["flag"]}
            rows.append(row)
            continue
        if report.status not in ("done", "flagged", "skipped"):
            continue
        subject_table = outputs.volumes
        if subject_table.is_file():
            rows += read_tsv(subject_table) if bids else read_volumes(subject_table)
        else:
            log.warning(
                "%s: %s is missing, its volumes are left out of %s (rerun with "
                "files.overwrite=true to rebuild them)",
                report.mri,
                subject_table.name,
                table.name,
            )
    if not rows and not always:
        return None
    if bids:
        return write_text_atomic(table, wide_tsv(rows))
    return write_volumes(rows, table)


def summary(reports: Sequence[SubjectReport], volumes: Path | None) -> None:
    """Print the table of subjects (status, sides, volumes, seconds) and the counts."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hsftrain segment")
    names = max((len(r.subject) for r in reports), default=7)  # never cut: other cells fold
    for column in ("subject", "status", "sides", "volume (mm3)", "seconds"):
        subject = column == "subject"
        table.add_column(
            column,
            justify="right" if column in ("seconds",) else "left",
            no_wrap=subject,
            min_width=names if subject else None,
            overflow="fold",
        )
    style = {"done": "green", "flagged": "yellow", "skipped": "yellow", "failed": "red"}
    for r in reports:
        volumes_text = ", ".join(f"{s} {v:.0f}" for s, v in r.volumes_mm3.items())
        table.add_row(
            r.subject,
            f"[{style[r.status]}]{r.status}[/]",
            ", ".join(r.sides),
            volumes_text,
            f"{r.seconds:.1f}" if r.status in ("done", "flagged") else "",
        )
    console = Console()
    console.print(table)
    counts = {s: sum(r.status == s for r in reports) for s in STATUSES}
    flagged = (
        f", {counts['flagged']} flagged (segmented, but see why in the flag column of volumes.csv)"
        if counts["flagged"]
        else ""
    )
    console.print(
        f"{counts['done']} segmented{flagged}, {counts['skipped']} skipped (already segmented; "
        f"files.overwrite=true to redo), {counts['failed']} failed"
        + (f"; volumes: {volumes}" if volumes else "")
    )


def raise_failures(reports: Sequence[SubjectReport], table: Path) -> None:
    """Raise :class:`SegmentError` listing every failed subject (none: nothing).

    Raises:
        SegmentError: some subjects failed.
    """
    failed = [r for r in reports if r.status == "failed"]
    if failed:
        why = "; ".join(r.error for r in failed)
        raise SegmentError(
            f"{len(failed)} of {len(reports)} MRI(s) failed (the others are written; each "
            f"failure has a row in {table.name}): {' '.join(why.split())}"
        )

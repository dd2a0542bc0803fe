"""Evaluation reports: per-subject CSV, summary statistics CSV, box plots, rich table.

Every file is written atomically: to a temporary file in the destination folder, then
moved into place with :func:`os.replace`, so a reader never sees half a CSV or PNG.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from hsftrain.core.atomic import atomic_path, write_text_atomic

#: Metrics summarised and plotted, with their display names.
REPORTED: dict[str, str] = {
    "dice": "Dice",
    "hd95_mm": "HD95 (mm)",
    "assd_mm": "ASSD (mm)",
    "volume_similarity": "Volume similarity",
}
#: ``note`` of a class in neither the prediction nor the reference of a subject: nothing to
#: score (its metrics are NaN), so it is left out of every mean.
ABSENT = "absent from prediction and reference: not scored"


@dataclass(frozen=True)
class LabelResult:
    """Metrics of one label of one subject (one row of ``metrics.csv``); ``note`` is
    :data:`ABSENT` for a class in neither image (its metrics NaN), else empty."""

    subject: str
    label: int
    label_name: str
    dice: float
    hd95_mm: float
    assd_mm: float
    volume_similarity: float
    pred_volume_mm3: float
    ref_volume_mm3: float
    note: str = ""


@dataclass(frozen=True)
class MetricStats:
    """Statistics of one metric of one label over subjects (one row of ``summary.csv``).

    ``n`` counts the subjects where the metric is defined (not NaN); ``mean``, ``std``
    (sample standard deviation, ddof=1: NaN when ``n < 2``) and ``median`` ignore NaN;
    ``absent`` counts the subjects where the class is in neither image (not averaged).
    """

    label: int
    label_name: str
    metric: str
    n: int
    mean: float
    std: float
    median: float
    absent: int = 0


RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(LabelResult))
STATS_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(MetricStats))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.10g}"
    return str(value)


def write_csv(rows: Sequence[object], columns: Sequence[str], path: Path) -> Path:
    """Write dataclass ``rows`` as a CSV with a header (atomically); NaN is written ``nan``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = asdict(row)  # type: ignore[call-overload]
        writer.writerow([_cell(values[c]) for c in columns])
    return write_text_atomic(path, buffer.getvalue())


def _labels(results: Sequence[LabelResult]) -> list[tuple[int, str]]:
    """Distinct ``(label, label_name)`` in label order."""
    return sorted({(r.label, r.label_name) for r in results})


def summarize(
    results: Sequence[LabelResult], metrics: Sequence[str] = tuple(REPORTED)
) -> list[MetricStats]:
    """Mean, std and median of each metric per label, over subjects, ignoring NaN (so
    classes absent from both images, whose metrics are NaN, count in no mean)."""
    stats = []
    for label, name in _labels(results):
        rows = [r for r in results if (r.label, r.label_name) == (label, name)]
        absent = sum(r.note == ABSENT for r in rows)
        for metric in metrics:
            values = np.array([getattr(r, metric) for r in rows], dtype=np.float64)
            values = values[~np.isnan(values)]
            n = int(values.size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                stats.append(
                    MetricStats(
                        label=label,
                        label_name=name,
                        metric=metric,
                        n=n,
                        mean=float(values.mean()) if n else math.nan,
                        std=float(values.std(ddof=1)) if n > 1 else math.nan,
                        median=float(np.median(values)) if n else math.nan,
                        absent=absent,
                    )
                )
    return stats


def plot_boxplots(
    results: Sequence[LabelResult],
    out_dir: Path,
    metrics: Sequence[str] = tuple(REPORTED),
) -> dict[str, Path]:
    """One PNG per metric, ``boxplot_<metric>.png``, with one box per label (NaN dropped).

    Uses matplotlib's Agg canvas directly: no pyplot, no global backend change.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = _labels(results)
    paths = {}
    for metric in metrics:
        data = []
        for label, name in labels:
            values = np.array(
                [getattr(r, metric) for r in results if (r.label, r.label_name) == (label, name)],
                dtype=np.float64,
            )
            data.append(values[~np.isnan(values)])
        figure = Figure(figsize=(max(4.0, 1.0 + 0.8 * len(labels)), 4.0), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.boxplot(data, showmeans=True)
        axes.set_xticks(range(1, len(labels) + 1), [name for _, name in labels], rotation=30)
        axes.set_ylabel(REPORTED.get(metric, metric))
        axes.set_title(f"{REPORTED.get(metric, metric)} per label")
        axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        path = out_dir / f"boxplot_{metric}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png")
        paths[metric] = path
    return paths


def summary_table(stats: Sequence[MetricStats], title: str = "Evaluation") -> object:
    """A :class:`rich.table.Table`: one row per label, ``mean ± std`` per metric (and,
    when a class is missing from both images of some subject, how many: ``absent``)."""
    from rich.table import Table

    metrics = list(dict.fromkeys(s.metric for s in stats))
    absent = any(s.absent for s in stats)
    table = Table(title=title)
    table.add_column("label", justify="right")
    table.add_column("name")
    table.add_column("n", justify="right")
    if absent:
        table.add_column("absent", justify="right")
        table.caption = "absent: subjects with the class in neither image (not in the means)"
    for metric in metrics:
        table.add_column(REPORTED.get(metric, metric), justify="right")
    by_label: dict[tuple[int, str], dict[str, MetricStats]] = {}
    for s in stats:
        by_label.setdefault((s.label, s.label_name), {})[s.metric] = s
    for (label, name), row in by_label.items():
        n = max(s.n for s in row.values())
        cells = []
        for metric in metrics:
            found = row.get(metric)
            if found is None or math.isnan(found.mean):
                cells.append("-")
            elif math.isnan(found.std):
                cells.append(f"{found.mean:.3f}")
            else:
                cells.append(f"{found.mean:.3f} ± {found.std:.3f}")
        counts = [str(max(s.absent for s in row.values()))] if absent else []
        table.add_row(str(label), name, str(n), *counts, *cells)
    return table

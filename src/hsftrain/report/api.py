"""``hsftrain report``: a cohort QC report of a segmentation output, opened offline.

``report.html`` and its ``report_assets/`` folder (the page's script and style, niivue,
the QC figures, one viewer script per crop, the volume plots) open from disk in a
browser with nothing fetched from the network; see docs/report.md.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig

from hsftrain.collect.outputs import CollectError, find_crops
from hsftrain.config.checks import as_bool
from hsftrain.core.atomic import atomic_path
from hsftrain.inference.reporting import SegmentError
from hsftrain.report.cohort import crop_row, failed_rows, score_rows
from hsftrain.report.page import write_page, write_plots, write_viewer_data

log = logging.getLogger(__name__)

#: The report's static files, copied beside each report.
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "report"
ASSETS_DIR = "report_assets"


def _copy(source: Path, target: Path) -> None:
    """Copy ``source`` onto ``target`` atomically (skipped when already identical)."""
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        if target.read_bytes() == source.read_bytes():
            return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def report(
    seg_dir: str | Path, out: str | Path | None = None, images: str | Path | None = None
) -> Path:
    """Write the QC report of the segmentation output ``seg_dir``.

    Args:
        seg_dir: the folder ``hsftrain segment`` wrote (``files.output_dir``), either layout.
        out: the page to write (default ``<seg_dir>/report.html``); its assets go to
            ``report_assets/`` beside it.
        images: the run's ``files.path``, where crop inputs are found when they are not
            beside their segmentations.

    Returns:
        the path of ``report.html``.

    Raises:
        CollectError: no segmentation output in ``seg_dir`` (or a crop whose image is
            missing), or ``out`` is not an ``.html`` file.
    """
    root = Path(seg_dir).expanduser()
    page = Path(out).expanduser() if out else root / "report.html"
    if page.suffix.lower() not in (".html", ".htm") or page.is_dir():
        raise CollectError(f"--out {page}: give the report's .html file (e.g. report.html)")
    crops = find_crops(root, images)
    assets = page.parent / ASSETS_DIR
    rows = [crop_row(c) for c in crops]
    rows += failed_rows(root, {c.subject for c in crops})
    rows = score_rows(rows)
    for name in (
        "report.js",
        "report.css",
        "niivue/niivue.umd.js",
        "niivue/LICENSE",
        "niivue/README.md",
    ):
        _copy(ASSETS / name, assets / name)
    viewer: set[int] = set()
    for i, row in enumerate(rows):
        if row.qc is not None:
            _copy(row.qc, assets / "qc" / f"s{i}.png")
        if row.crop is not None:
            files = {"image": row.crop.image, "seg": row.crop.prediction}
            if row.uncertainty_map is not None:
                files["unc"] = row.uncertainty_map
            write_viewer_data(assets / "data" / f"s{i}.js", f"s{i}", files)
            viewer.add(i)
    for stale in [*(assets / "qc").glob("s*.png"), *(assets / "data").glob("s*.js")]:
        if stale.stem[1:].isdigit() and int(stale.stem[1:]) >= len(rows):
            stale.unlink()  # a crop of an earlier, larger report of this folder
    plots = write_plots(assets, rows)
    write_page(page, rows, root, plots, viewer)
    marked = sum(1 for r in rows if r.marks)
    log.info("QC report: %s (%d crops, %d marked for review)", page, len(rows), marked)
    return page


def segment_and_report(cfg: DictConfig) -> list[Path]:
    """``hsftrain segment``, then its QC report (``report=true``, one run, not a shard).

    Raises:
        ConfigError: ``report`` is not true or false (before segmenting anything).
        what :func:`hsftrain.inference.api.segment` raises; a report that cannot be
            written is a warning, never a failed run.
    """
    from hsftrain.inference.api import segment

    wanted = as_bool("report", cfg.get("report", True))  # checked before the long run
    try:
        done = segment(cfg)
    except SegmentError:
        if wanted:
            _after_segment(cfg)
        raise
    if wanted:
        _after_segment(cfg)
    return done


def _after_segment(cfg: DictConfig) -> None:
    files = cfg.get("files") or {}
    from hsftrain.inference.shards import choose_shard

    if choose_shard(files.get("shard")) is not None:  # files.shard or a SLURM array task
        log.info("no QC report from one shard: hsftrain report on the merged output folder")
        return
    path = Path(str(files.get("path"))).expanduser() if files.get("path") else None
    if path is not None and path.is_file():  # one MRI: its results are beside it
        path = path.parent
    out = files.get("output_dir") or path
    if files.get("bids") and not files.get("output_dir"):
        out = Path(str(files.get("path"))).expanduser() / "derivatives" / "hsftrain"
    try:
        report(str(out), images=str(path) if path else None)
    except CollectError as err:
        log.warning("no QC report: %s", err)

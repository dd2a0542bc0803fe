"""The files of a QC report: the HTML page, the volume plots and each crop's viewer data."""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hsftrain.core.atomic import atomic_path, write_text_atomic
from hsftrain.inference.writer import QC_COLOURS
from hsftrain.report.cohort import Row

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="report_assets/report.css">
</head>
<body>
<h1>{title}</h1>
<p class="summary">{summary}</p>
<p>Click a row to see its QC figure, the viewer and its rating; click a header to sort.
Ratings are kept in this browser until you save them:
<button id="save" type="button">Save qc_ratings.tsv</button> <span id="rated"></span>
(then <code>hsftrain data collect {seg_dir} --ratings qc_ratings.tsv ...</code>).
Load saved ratings: <input id="load" type="file" accept=".tsv,.txt"> <span id="loaded"></span>
Keys: <kbd>n</kbd> / <kbd>p</kbd> next / previous crop, <kbd>1</kbd> <kbd>2</kbd> <kbd>3</kbd>
pass / fix / fail.</p>
<div class="layout">
<div class="table-wrap"><table id="cohort-table"></table></div>
<div id="panel" hidden></div>
</div>
<h2>Volumes</h2>
<div class="plots">{plots}</div>
<p class="summary">Written by hsftrain {version}; viewer: niivue (BSD-2-Clause,
report_assets/niivue/LICENSE).</p>
<script type="application/json" id="cohort">{cohort}</script>
<script src="report_assets/report.js"></script>
</body>
</html>
"""


def legend(rows: Sequence[Row]) -> list[tuple[int, str, list[int]]]:
    """``(value, name, [r, g, b])`` of each label (0-255), in the QC figures' colours."""
    labels: dict[int, str] = {}
    for row in rows:
        for value, name in row.labels.items():
            labels.setdefault(value, name)
    out = []
    for value, name in sorted(labels.items()):
        rgb = [int(round(255 * c)) for c in QC_COLOURS[(value - 1) % len(QC_COLOURS)]]
        out.append((value, name, rgb))
    return out


def cohort_json(rows: Sequence[Row], report_id: str, viewer: set[int]) -> str:
    """The page's data: one object per row (``qc``: the copied figure's relative path)."""
    labels = list(dict.fromkeys(name for r in rows for name in r.volumes))
    items = []
    for i, r in enumerate(rows):
        items.append(
            {
                "id": f"s{i}",
                "rank": i + 1,
                "subject": r.subject,
                "side": r.side,
                "volumes": r.volumes,
                "whole": r.whole,
                "asymmetry": r.asymmetry,
                "uncertainty": r.uncertainty,
                "score": round(r.score, 2),
                "marks": r.marks,
                "failed": r.failed,
                "qc": f"report_assets/qc/s{i}.png" if r.qc is not None else "",
                "data": i in viewer,
            }
        )
    data = {
        "id": report_id,
        "labels": labels,
        "legend": legend(rows),
        "rows": items,
    }
    # "</" would end the <script> element holding the JSON
    return json.dumps(data).replace("</", "<\\/")


def write_page(
    path: Path, rows: Sequence[Row], seg_dir: Path, plots: Sequence[str], viewer: set[int]
) -> Path:
    """Write ``report.html`` (atomically)."""
    from hsftrain import __version__

    failed = sum(1 for r in rows if r.failed)
    marked = sum(1 for r in rows if r.marks and not r.failed)
    summary = (
        f"{len(rows) - failed} segmented crops from {seg_dir}, {failed} failed subject(s); "
        f"{marked} crop(s) marked for review, listed first"
    )
    page = PAGE.format(
        title=html.escape(f"hsftrain QC report: {seg_dir.name or seg_dir}"),
        summary=html.escape(summary),
        seg_dir=html.escape(str(seg_dir)),
        plots="\n".join(f'<img src="{html.escape(p)}" alt="volume distributions">' for p in plots),
        version=html.escape(__version__),
        cohort=cohort_json(rows, str(seg_dir.resolve()), viewer),
    )
    return write_text_atomic(path, page)


def write_viewer_data(path: Path, row_id: str, files: dict[str, Path]) -> Path:
    """A script handing the crop's NIfTI files (base64 of the gzipped files) to the page.

    A page opened from disk may not ``fetch`` its neighbours (Chromium refuses ``file://``
    requests), but it may load scripts: each crop's files travel in one small script.
    """
    data: dict[str, object] = {"centre_mm": _centre_mm(files["seg"])}
    for name, nifti in files.items():
        if nifti.name.lower().endswith(".nii.gz"):
            raw = nifti.read_bytes()
        else:  # .nii, .mgz, ...: the viewer is given a gzipped NIfTI (named .nii.gz)
            import nibabel as nib

            image = nib.load(str(nifti))
            volume = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
            raw = gzip.compress(volume.to_bytes(), mtime=0)
        data[name] = base64.b64encode(raw).decode("ascii")
    return write_text_atomic(path, f"hsftrainData({json.dumps(row_id)}, {json.dumps(data)});\n")


def _centre_mm(seg: Path) -> list[float] | None:
    """The labels' centre of mass in world coordinates (mm), where the viewer starts."""
    import nibabel as nib

    image = nib.load(str(seg))
    voxels = np.argwhere(np.asarray(image.dataobj) > 0)
    if not len(voxels):
        return None
    centre = image.affine @ np.append(voxels.mean(axis=0), 1.0)
    return [round(float(c), 2) for c in centre[:3]]


def write_plots(folder: Path, rows: Sequence[Row]) -> list[str]:
    """Box plots of each label's volume per side (one PNG); paths relative to the page."""
    ok = [r for r in rows if r.volumes and not r.failed]
    if not ok:
        return []
    os.environ.setdefault("MPLCONFIGDIR", str(Path(tempfile.gettempdir()) / "hsftrain-matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*dict.fromkeys(name for r in ok for name in r.volumes), "whole"]
    sides = sorted({r.side for r in ok})
    fig, axes = plt.subplots(1, len(names), figsize=(2.4 * len(names) + 1, 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        groups = [
            [
                (r.whole or 0.0) if name == "whole" else r.volumes.get(name, 0.0)
                for r in ok
                if r.side == s
            ]
            for s in sides
        ]
        ax.boxplot(groups, tick_labels=sides, showfliers=False)
        for k, values in enumerate(groups, start=1):
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            marked = [bool(r.marks) for r in ok if r.side == sides[k - 1]]
            colours = ["#c00" if m else "#357" for m in marked]
            ax.scatter(np.add(k, jitter), values, s=8, c=colours, zorder=3)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("volume (mm³)")
    fig.tight_layout()
    target = folder / "volumes.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return [f"report_assets/{target.name}"]

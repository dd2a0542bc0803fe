"""The QC report of a 200-crop cohort: its size on disk and how fast it opens in headless
Chromium (docs/report.md).

    python benchmarks/report_scale.py [--n 200]

Segments the 8 bundled held-out crops (``assets/sample/msd_heldout``) with
``segmentation=demo`` once, repeats their outputs under new names up to ``--n`` crops (an
HSF-layout output folder, as ``segment`` writes it), runs ``hsftrain report`` and opens
the page from disk in headless Chromium (Debian's ``chromium``, Playwright). Prints a
table and writes ``benchmarks/results/report_scale.json``:

* ``report_s``: ``hsftrain report`` (reading the crops, writing the folder);
* ``size_mb``: ``report.html`` + ``report_assets/`` on disk; ``viewer_data_mb`` the part
  holding each crop's NIfTI files for the viewer;
* ``open_s``: from navigation to the table listing every crop; ``viewer_s``: from a click
  on the first row to niivue drawing it; ``js_heap_mb``: the page's JavaScript heap then.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "src" / "hsftrain" / "assets" / "sample" / "msd_heldout"
RESULTS = ROOT / "benchmarks" / "results" / "report_scale.json"


def cohort(root: Path, n: int) -> tuple[Path, Path]:
    """``n`` segmented crops: the 8 held-out ones segmented once, then repeated."""
    from hsftrain.config.compose import compose
    from hsftrain.inference.api import segment

    first, images, pred = root / "first", root / "images", root / "pred"
    first.mkdir()
    images.mkdir()
    pred.mkdir()
    for img in sorted(HELDOUT.glob("*_img.nii.gz")):
        shutil.copy(img, first / img.name)
    cfg = compose(
        "segment",
        [
            f"files.path={first}",
            "files.pattern=*_img.nii.gz",
            f"files.output_dir={root / 'seg'}",
            "segmentation=demo",
            "report=false",
        ],
    )
    segment(cfg)
    stems = [p.name[: -len(".nii.gz")] for p in sorted(first.glob("*_img.nii.gz"))]
    rows = []
    for i in range(n):
        stem = stems[i % len(stems)]
        new = f"rep{i // len(stems):03d}_{stem}"
        shutil.copy(first / f"{stem}.nii.gz", images / f"{new}.nii.gz")
        for out in (root / "seg").glob(f"{stem}_hippocampus_*"):
            shutil.copy(out, pred / out.name.replace(stem, new, 1))
        lines = (root / "seg" / f"{stem}_hippocampus_volumes.csv").read_text().splitlines()
        rows += [line.replace(stem, new, 1) for line in lines[1:]]
    header = (root / "seg" / "volumes.csv").read_text().splitlines()[0]
    (pred / "volumes.csv").write_text("\n".join([header, *rows]) + "\n")
    return images, pred


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="crops in the cohort")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from hsftrain.report.api import report

    sys.path.insert(0, str(ROOT))
    from tests.reliability.test_report_browser import CHROMIUM_ARGS  # the test's browser

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, pred = cohort(root, args.n)
        start = time.perf_counter()
        page_path = report(pred, images=images)
        report_s = time.perf_counter() - start
        size = folder_mb(pred / "report_assets") + page_path.stat().st_size / 1e6
        data_mb = folder_mb(pred / "report_assets" / "data")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            start = time.perf_counter()
            page.goto(page_path.as_uri())
            page.wait_for_selector(f"#cohort-table tbody tr:nth-child({args.n})")
            open_s = time.perf_counter() - start
            start = time.perf_counter()
            page.locator("#cohort-table tbody tr").first.click()
            page.wait_for_selector("#viewer[data-drawn='1']", timeout=60_000)
            viewer_s = time.perf_counter() - start
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
            heap_mb = metrics["JSHeapUsedSize"] / 1e6
            browser.close()
    result = {
        "crops": args.n,
        "report_s": round(report_s, 2),
        "size_mb": round(size, 1),
        "viewer_data_mb": round(data_mb, 1),
        "open_s": round(open_s, 2),
        "viewer_s": round(viewer_s, 2),
        "js_heap_mb": round(heap_mb, 1),
        "browser": "Debian chromium, headless, software WebGL (SwiftShader)",
    }
    print(
        f"{'crops':>6} {'report s':>9} {'size MB':>8} {'open s':>7} {'viewer s':>9} {'heap MB':>8}"
    )
    print(
        f"{args.n:>6} {report_s:>9.1f} {size:>8.1f} {open_s:>7.2f} {viewer_s:>9.2f} {heap_mb:>8.1f}"
    )
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

"""The QC report in a real browser (headless Chromium through Playwright): the 8 held-out
crops plus a broken case; the table lists every crop with the broken one first, the niivue
viewer draws, and a rating saved from the page is a ``qc_ratings.tsv`` that ``hsftrain
data collect`` accepts.

Needs Debian's ``chromium`` (scripts/browser.sh installs it) and the ``playwright`` Python
package (the dev extra); skipped, saying which is missing, where either is not there.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.reliability.conftest import cli
from tests.reliability.test_report import BROKEN, segment_heldout

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Headless, offline: no GPU, no background requests, no first-run pages.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/browser.sh (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is missing: pip install -e '.[dev]'")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return segment_heldout(tmp_path_factory.mktemp("browser"), "report=false")


def test_the_report_in_chromium(browser: Any, segmented: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    new, pred = segmented
    result = cli("report", pred, "--images", new)
    assert result.code == 0, result.output[-3000:]
    page = browser.new_page(accept_downloads=True)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
    page.goto((pred / "report.html").as_uri())

    rows = page.locator("#cohort-table tbody tr")
    assert rows.count() == 9
    subjects = [rows.nth(i).get_attribute("data-subject") for i in range(9)]
    assert subjects[0] == BROKEN
    assert sorted(subjects[1:]) == sorted(p.name[:-7] for p in new.glob("hippocampus_*_img.nii.gz"))

    # the viewer of the broken case draws the image and its segmentation
    rows.first.click()
    page.wait_for_selector("#viewer[data-drawn='1']", timeout=30_000)
    page.wait_for_timeout(300)
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#viewer").screenshot())).convert("RGB"))
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 50
    assert page.locator("#panel img").count() == 1  # the QC figure

    # rate two crops, save the ratings as the browser's download
    page.select_option("#rating", "fail")
    page.fill("#note", "noise, no\thippocampus")
    # clicking the next row blurs the note, which records it (its change event)
    page.locator("#cohort-table tbody tr[data-subject='hippocampus_098_img']").click()
    page.select_option("#rating", "pass")
    with page.expect_download() as download:
        page.click("#save")
    assert download.value.suggested_filename == "qc_ratings.tsv"
    ratings = tmp_path / "qc_ratings.tsv"
    download.value.save_as(ratings)
    lines = ratings.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "subject\tside\trating\tnote" and len(lines) == 10
    assert "hippocampus_098_img\tn/a\tpass\t" in lines
    assert f"{BROKEN}\tn/a\tfail\tnoise, no hippocampus" in lines
    assert "hippocampus_099_img\tn/a\t\t" in lines  # not rated
    # the keyboard: n opens the next crop in the table, 3 rates it fail
    page.locator("#cohort-table tbody tr[data-subject='hippocampus_099_img']").click()
    page.keyboard.press("n")
    page.keyboard.press("3")
    cell = "#cohort-table tbody tr[data-subject='{}'] .c-rating"
    after = subjects[subjects.index("hippocampus_099_img") + 1]
    assert page.locator(cell.format(after)).inner_text() == "fail"

    # ratings survive a reload, and a saved file loads back (another browser)
    page.reload()
    assert page.locator(cell.format("hippocampus_098_img")).inner_text() == "pass"
    other = tmp_path / "other.tsv"
    other.write_text(
        "subject\tside\trating\tnote\nhippocampus_098_img\tcrop\tfix\tx\nsub-9\tn/a\tpass\t\n"
    )
    page.set_input_files("#load", other)
    page.wait_for_function("document.getElementById('loaded').textContent !== ''")
    assert page.locator("#loaded").inner_text() == "1 rating(s) loaded, 1 row(s) not in this report"
    assert page.locator(cell.format("hippocampus_098_img")).inner_text() == "fix"
    assert not errors, errors
    assert all(u.startswith(("file://", "blob:", "data:")) for u in requests), requests

    # hsftrain data collect accepts it: the pass crop collected, the failed one left out
    out = tmp_path / "collected"
    result = cli("data", "collect", pred, "--ratings", ratings, "--images", new, "--out", out)
    assert result.code == 0, result.output[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [
        "hippocampus_098_img.nii.gz",
        "hippocampus_098_lbl.nii.gz",
    ]

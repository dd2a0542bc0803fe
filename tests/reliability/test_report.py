"""``hsftrain report`` and the report ``segment`` writes: the 8 bundled held-out crops plus a
broken case, segmented with the demo model; the broken case comes first, a folder without
segment output is one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from hsftrain.report.api import ASSETS
from tests.reliability.conftest import assert_user_error, cli, files_below

HELDOUT = Path(__file__).resolve().parents[2] / "src/hsftrain/assets/sample/msd_heldout"
BROKEN = "zz_noise_img"  # sorted last by name: only its marks can bring it first


def segment_heldout(root: Path, *extra: str) -> tuple[Path, Path]:
    """The 8 held-out crops and a noise image (a segmentation with a tiny label and a
    high uncertainty) in ``root/new``, segmented with the demo model into ``root/pred``."""
    new = root / "new"
    new.mkdir(parents=True)
    for img in sorted(HELDOUT.glob("*_img.nii.gz")):
        shutil.copy(img, new / img.name)
    first = nib.load(str(sorted(new.glob("*_img.nii.gz"))[0]))
    noise = np.random.default_rng(0).normal(100, 20, first.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, first.affine), str(new / f"{BROKEN}.nii.gz"))
    result = cli(
        "segment",
        f"files.path={new}",
        "files.pattern=*_img.nii.gz",
        f"files.output_dir={root / 'pred'}",
        "segmentation=demo",
        *extra,
    )
    assert result.code == 0, result.output[-3000:]
    return new, root / "pred"


def cohort(page: Path) -> dict[str, object]:
    """The data the report's page shows (its embedded JSON)."""
    found = re.search(r'id="cohort">(.*?)</script>', page.read_text(), re.S)
    assert found is not None
    data: dict[str, object] = json.loads(found.group(1))
    return data


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return segment_heldout(tmp_path_factory.mktemp("report"))


def test_segment_writes_the_report_with_the_broken_case_first(
    segmented: tuple[Path, Path],
) -> None:
    _, pred = segmented
    page = pred / "report.html"
    rows = cohort(page)["rows"]
    assert isinstance(rows, list) and len(rows) == 9
    assert rows[0]["subject"] == BROKEN
    assert any("tiny" in m or "empty" in m for m in rows[0]["marks"])
    assert all(not r["marks"] for r in rows[1:] if "heldout" not in r["subject"])
    assert {r["subject"] for r in rows[1:]} == {p.name[:-7] for p in HELDOUT.glob("*_img.nii.gz")}
    assets = pred / "report_assets"
    assert (assets / "niivue" / "LICENSE").read_text().startswith("BSD 2-Clause")
    assert len(list((assets / "data").glob("*.js"))) == 9
    assert len(list((assets / "qc").glob("*.png"))) == 9
    assert (assets / "volumes.png").is_file()
    # offline: the page and its script load nothing from the network
    for text in (page.read_text(), (assets / "report.js").read_text()):
        assert not re.search(r"""(src|href)=["']?https?:""", text)
        assert "fetch(" not in text


def test_report_command_writes_elsewhere_and_the_key_turns_it_off(
    segmented: tuple[Path, Path], tmp_path: Path
) -> None:
    new, pred = segmented
    out = tmp_path / "qc" / "cohort.html"
    result = cli("report", pred, "--out", out, "--images", new)
    assert result.code == 0, result.output[-3000:]
    assert cohort(out)["rows"][0]["subject"] == BROKEN  # type: ignore[index]
    assert (tmp_path / "qc" / "report_assets" / "report.js").is_file()
    off = tmp_path / "off"
    shutil.copytree(new, off / "new")
    result = cli(
        "segment",
        f"files.path={off / 'new'}",
        "files.pattern=hippocampus_098_img.nii.gz",
        f"files.output_dir={off / 'pred'}",
        "segmentation=demo",
        "report=false",
    )
    assert result.code == 0, result.output[-3000:]
    assert not (off / "pred" / "report.html").exists()
    assert not (off / "pred" / "report_assets").exists()


def test_a_failed_subject_is_listed_first(tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(HELDOUT / "hippocampus_098_img.nii.gz", new / "hippocampus_098_img.nii.gz")
    image = nib.load(str(new / "hippocampus_098_img.nii.gz"))
    nib.save(
        nib.Nifti1Image(np.full(image.shape, 7.0, np.float32), image.affine),
        str(new / "flat_img.nii.gz"),
    )
    result = cli(
        "segment", f"files.path={new}", "files.pattern=*_img.nii.gz",
        f"files.output_dir={tmp_path / 'pred'}", "segmentation=demo",
    )  # fmt: skip
    assert result.code == 1  # the constant image fails; the report is still written
    rows = cohort(tmp_path / "pred" / "report.html")["rows"]
    assert [r["subject"] for r in rows] == ["flat_img", "hippocampus_098_img"]  # type: ignore[index]
    assert rows[0]["marks"] == ["failed"] and "constant" in rows[0]["failed"]  # type: ignore[index]


def test_a_folder_without_segment_output_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    before = files_below(tmp_path)
    message = assert_user_error(cli("report", tmp_path / "empty"), "no output of hsftrain segment")
    assert str(tmp_path / "empty") in message
    assert files_below(tmp_path) == before
    assert_user_error(cli("report", tmp_path / "missing"), "no such folder")


def test_the_out_option_must_name_an_html_page(
    segmented: tuple[Path, Path], tmp_path: Path
) -> None:
    _, pred = segmented
    assert_user_error(cli("report", pred, "--out", tmp_path / "r.txt"), "--out", ".html")
    assert not (tmp_path / "r.txt").exists()


def test_the_vendored_viewer_names_its_package_version_and_licence() -> None:
    readme = (ASSETS / "niivue" / "README.md").read_text()
    assert "@niivue/niivue" in readme and "0.69.0" in readme and "BSD-2-Clause" in readme
    assert (ASSETS / "niivue" / "niivue.umd.js").stat().st_size < 5_000_000


def test_a_bids_output_gives_the_same_report(tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.mkdir()
    for img in sorted(HELDOUT.glob("*_img.nii.gz"))[:5]:
        shutil.copy(img, new / img.name)
    first = nib.load(str(sorted(new.glob("*_img.nii.gz"))[0]))
    noise = np.random.default_rng(0).normal(100, 20, first.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, first.affine), str(new / f"{BROKEN}.nii.gz"))
    result = cli(
        "segment", f"files.path={new}", "files.pattern=*_img.nii.gz",
        f"files.output_dir={tmp_path / 'bids'}", "segmentation=demo", "files.layout=bids",
    )  # fmt: skip
    assert result.code == 0, result.output[-3000:]
    rows = cohort(tmp_path / "bids" / "report.html")["rows"]
    assert isinstance(rows, list) and len(rows) == 6
    assert rows[0]["subject"] == "sub-zznoiseimg"
    assert set(rows[0]["volumes"]) == {"anterior", "posterior"}  # dseg.tsv's names
    assert all(not r["marks"] for r in rows[1:])  # BIDS "n/a" flags are no flags
    assert all(r["data"] and r["qc"] for r in rows)  # images found through the sidecars


def test_the_report_key_is_checked_before_segmenting(tmp_path: Path) -> None:
    out = cli(
        "segment", f"files.path={HELDOUT}", "files.pattern=hippocampus_098_img.nii.gz",
        f"files.output_dir={tmp_path / 'pred'}", "segmentation=demo", "report=maybe",
    )  # fmt: skip
    assert_user_error(out, "report", "true or false")
    assert not (tmp_path / "pred").exists()


def test_one_shard_writes_no_report(tmp_path: Path) -> None:
    result = cli(
        "segment", f"files.path={HELDOUT}", "files.pattern=hippocampus_09*_img.nii.gz",
        f"files.output_dir={tmp_path / 'pred'}", "segmentation=demo", "files.shard=1/2",
    )  # fmt: skip
    assert result.code == 0, result.output[-3000:]
    assert list((tmp_path / "pred").glob("*_seg.nii.gz"))
    assert not (tmp_path / "pred" / "report.html").exists()
    assert any("no QC report from one shard" in m for m in result.infos)

"""``hsftrain hub list`` at 80 columns and one documented cache location."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from hsftrain.cli.app import app
from hsftrain.hub.catalog import models, presets
from hsftrain.hub.fetch import CACHE_LOCATION
from hsftrain.hub.listing import listing

ROOT = Path(__file__).resolve().parents[2]


def test_listing_fits_80_columns_and_names_everything(tmp_path: Path) -> None:
    text = listing(models(tmp_path), presets(), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    for name in ("arunet_4.0.0_single", "bagging_accurate", "demo", "custom"):
        assert re.search(rf"^  {re.escape(name)}\b", text, re.M), name


def test_cli_hub_list_narrow_terminal(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["hub", "list", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "bagging_accurate" in result.output and "│" not in result.output


def test_one_cache_location_in_help_and_docs() -> None:
    result = CliRunner().invoke(app, ["hub", "fetch", "--help"], terminal_width=200)
    assert "~/.cache/hsftrain/models" in " ".join(result.output.split())
    assert "~/.cache/hsftrain/models" in CACHE_LOCATION
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    pages += sorted((ROOT / "src/hsftrain/conf").rglob("*.yaml"))
    for page in pages:
        for match in re.finditer(r"~/\.cache/hsftrain\S*", page.read_text()):
            assert match.group(0).startswith("~/.cache/hsftrain/models"), (page, match.group(0))


def test_every_model_row_lines_up_whatever_its_version(tmp_path: Path) -> None:
    text = listing(models(tmp_path), presets(), 80)
    lines = text.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["name", "version"])
    starts = [header.index(h) for h in ("version", "kind", "cached")]
    rows = [line for line in lines if re.match(r"^  \S+ +\S+ +(onnx|checkpoint) ", line)]
    assert any("hsftrain-1.2" in r for r in rows)
    for r in rows:
        cells = list(re.finditer(r"\S+", r))
        assert [c.start() for c in cells[1:4]] == starts, r
    assert "..." not in text  # nothing cut

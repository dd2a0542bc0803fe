"""The product speaks of the product: no numbered sessions, issues or run tags in the code,
tests, docs, benchmarks or README (vendored assets and binary files excluded)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What the check reads (git's files, tracked or new and not ignored, under these paths)
SCANNED = ("src", "tests", "docs", "benchmarks", "README.md")
#: Third-party files shipped as they are
VENDORED = ("src/hsftrain/assets/report/niivue/",)
#: a numbered session or issue, or a run tag (an underscore, v, a number, an underscore)
FORBIDDEN = re.compile(r"sessions? [0-9]|issues? [0-9]|_v[0-9]+_", re.IGNORECASE)


def scanned_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SCANNED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [ROOT / name for name in listed if not name.startswith(VENDORED)]


def hits(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError:  # listed by git but deleted in the working tree
        return []
    if b"\0" in data[:8192]:  # binary: models, images, archives
        return []
    text = data.decode("utf-8", errors="replace")
    rel = path.relative_to(ROOT)
    return [
        f"{rel}:{number}: {line.strip()[:120]}"
        for number, line in enumerate(text.splitlines(), 1)
        if FORBIDDEN.search(line)
    ]


def test_the_check_finds_what_it_forbids() -> None:
    for text in ("see sess" + "ion 7", "Iss" + "ue 11: budget", "budget30m_v" + "23_nodemon"):
        assert FORBIDDEN.search(text), text
    for text in ("a BIDS session", "sessions and runs", "hsftrain_msd_1.2", "issue a warning"):
        assert not FORBIDDEN.search(text), text


def test_no_words_about_how_the_project_was_built() -> None:
    files = scanned_files()
    assert any(f.name == "README.md" for f in files) and len(files) > 100
    found = [hit for path in files for hit in hits(path)]
    assert not found, "say what the product does instead of how it was built:\n" + "\n".join(found)

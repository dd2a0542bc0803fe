"""Log lines are never wrapped: a long message stays one line at an 80-column terminal and
in a pipe (where rich assumes 80 columns), so that its path can be copied and ``grep``
finds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_long_error_stays_one_line_when_piped_at_80_columns(tmp_path: Path) -> None:
    missing = tmp_path / "a_rather_long_folder_name_that_does_not_exist" / ("sub" * 20)
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    done = subprocess.run(
        [sys.executable, "-m", "hsftrain.cli", "data", "prepare", "datasets=synth"]
        + [f"datasets.main_path={missing}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    said = [line for line in lines if "does not exist" in line]
    assert len(said) == 1, lines
    assert len(said[0]) > 120 and "ERROR" in said[0]
    assert said[0].count(str(missing)) == 2  # the path, whole, twice on the one line
    assert said[0].rstrip().endswith("or fix datasets.datasets.synth.path")
    assert len(lines) == 1, lines  # nothing wrapped onto a second line


def test_a_multi_line_message_keeps_its_lines_under_the_first(capsys) -> None:  # type: ignore[no-untyped-def]
    import logging

    from hsftrain.core.logs import setup_logging

    setup_logging()
    logging.getLogger("hsftrain.test").warning("first line " + "x" * 150 + "\nsecond line")
    out = capsys.readouterr().out.splitlines()
    first = next(line for line in out if "first line" in line)
    second = next(line for line in out if "second line" in line)
    assert first.endswith("x" * 150)
    assert second.index("second line") == first.index("first line")

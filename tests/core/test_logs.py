"""train.log: records before the run directory exists wait for it."""

from __future__ import annotations

import logging
from pathlib import Path

from hsftrain.core.logs import RUN_LOG, run_log, setup_logging


def test_run_log_buffers_until_the_folder_exists(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = logging.getLogger("hsftrain.test")
    with run_log(run_dir) as path:
        log.info("before the folder")
        assert not run_dir.exists()
        run_dir.mkdir()
        log.info("after the folder")
        log.debug("not at INFO")
    log.info("after the run")
    lines = path.read_text().splitlines()
    assert path == run_dir / RUN_LOG and len(lines) == 2
    assert lines[0].endswith("INFO    before the folder")
    assert lines[1].endswith("INFO    after the folder")


def test_a_run_that_never_creates_its_folder_leaves_nothing(tmp_path: Path) -> None:
    with run_log(tmp_path / "never"):
        logging.getLogger("hsftrain").warning("failed early")
    assert not (tmp_path / "never").exists()


def test_file_only_records_stay_off_the_console(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    setup_logging()
    (tmp_path / "r").mkdir()
    with run_log(tmp_path / "r") as path:
        logging.getLogger("hsftrain").info("table row", extra={"file_only": True})
    assert "table row" in path.read_text()
    captured = capsys.readouterr()
    assert "table row" not in captured.out + captured.err

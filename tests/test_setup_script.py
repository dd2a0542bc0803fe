"""scripts/setup.sh says what it does and stays a no-op once installed.

Run against a copy of the script with a stub ``.venv/bin/python`` that records its
arguments: nothing is installed and no network is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "scripts" / "constraints-cpu.txt", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "pip_calls.txt"}\n')
    python.chmod(0o755)
    return tmp_path


def _run(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": "python3"}
    return subprocess.run(
        ["bash", str(root / "scripts" / "setup.sh")], capture_output=True, text=True, env=env
    )


def test_install_shows_stages_and_pip_progress(tmp_path: Path) -> None:
    root = _project(tmp_path)
    result = _run(root)
    assert result.returncode == 0, result.stderr
    assert "[setup 2/3] installing" in result.stdout and "[setup 3/3] done" in result.stdout
    (call,) = (root / "pip_calls.txt").read_text().splitlines()
    assert call.startswith("-m pip install") and "--quiet" not in call and "-q " not in call
    assert "-c scripts/constraints-cpu.txt -e .[dev]" in call
    assert (root / ".venv" / ".hsftrain-installed").is_file()


def test_noop_when_installed(tmp_path: Path) -> None:
    root = _project(tmp_path)
    stamp = root / ".venv" / ".hsftrain-installed"
    stamp.touch()
    later = time.time() + 5
    os.utime(stamp, (later, later))
    result = _run(root)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert not (root / "pip_calls.txt").exists()


def test_torch_pin_stays_in_the_one_pip_command() -> None:
    """The library asks for a lower bound; the CPU pin is the set-up's constraint."""
    assert '"torch>=2.4"' in (ROOT / "pyproject.toml").read_text()
    pins = (ROOT / "scripts" / "constraints-cpu.txt").read_text().splitlines()
    assert "torch==2.13.0" in pins
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert script.count("pip install") == 1


def test_a_changed_constraints_file_reinstalls(tmp_path: Path) -> None:
    root = _project(tmp_path)
    stamp = root / ".venv" / ".hsftrain-installed"
    stamp.touch()
    os.utime(root / "pyproject.toml", (0, 0))
    later = time.time() + 5
    os.utime(root / "scripts" / "constraints-cpu.txt", (later, later))
    assert _run(root).returncode == 0
    assert (root / "pip_calls.txt").is_file()

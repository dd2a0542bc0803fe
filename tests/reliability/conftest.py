"""The reliability suite: bad inputs and faults built on the fly, run through the CLI.

Each case checks the exit code, that the error is one log line naming the key or file
(no traceback), and that nothing was written or left half-written. Everything runs in
process (typer's CliRunner), on tiny data, so the suite takes well under a minute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hsftrain.cli.app import app
from tests.conftest import TINY


@dataclass
class Outcome:
    """What one CLI call did."""

    code: int
    output: str
    errors: list[str]
    warnings: list[str]
    exception: BaseException | None
    infos: list[str] = field(default_factory=list)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def cli(*args: object) -> Outcome:
    """Run ``hsftrain <args>`` in process; collect the hsftrain log records."""
    handler = _Records()
    logger = logging.getLogger("hsftrain")
    logger.addHandler(handler)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        logger.removeHandler(handler)
    by_level = {
        level: [r.getMessage() for r in handler.records if r.levelno == level]
        for level in (logging.ERROR, logging.WARNING, logging.INFO)
    }
    return Outcome(
        result.exit_code,
        result.output,
        by_level[logging.ERROR],
        by_level[logging.WARNING],
        result.exception,
        by_level[logging.INFO],
    )


def assert_user_error(out: Outcome, *words: str, code: int = 1) -> str:
    """A user error: exit ``code``, exactly one one-line ERROR record containing every
    word of ``words`` (case-insensitive), no traceback. Returns the message."""
    assert out.code == code, (out.code, out.output[-3000:])
    assert isinstance(out.exception, SystemExit), repr(out.exception)
    assert len(out.errors) == 1, out.errors
    message = out.errors[0]
    assert "\n" not in message, message
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    assert "Traceback" not in out.output
    return message


def files_below(root: Path) -> set[str]:
    """Every path below ``root`` (relative), empty when it does not exist."""
    if not root.exists():
        return set()
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def assert_no_temporaries(*roots: Path) -> None:
    for root in roots:
        left = [p for p in files_below(root) if "hsftrain-tmp" in p]
        assert not left, left


def train_args(phantoms: Path, out: Path, *extra: str) -> list[str]:
    """A tiny training on the phantoms (add run_name and the overrides under test)."""
    return [
        *TINY,
        "datasets=synth",
        f"datasets.main_path={phantoms}",
        f"datasets.output_path={out}",
        *extra,
    ]


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, phantoms: Path) -> Path:
    """A one-epoch tiny run (its checkpoints/last.ckpt is a good model)."""
    out = tmp_path_factory.mktemp("reliability_runs")
    result = cli("train", *train_args(phantoms, out, "run_name=good"))
    assert result.code == 0, result.output[-3000:]
    return out / "good"


@pytest.fixture(scope="session")
def nan_ckpt(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The good checkpoint with one weight set to NaN (a training that diverged)."""
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key] = torch.full_like(ckpt["state_dict"][key], float("nan"))
    path = tmp_path_factory.mktemp("nan_ckpt") / "diverged.ckpt"
    torch.save(ckpt, path)
    return path

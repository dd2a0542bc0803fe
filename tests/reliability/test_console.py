"""What a person sees at an 80-column terminal or in a pipe: one epoch numbering, tables
whose rows are neither cut nor wrapped mid-cell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

WIDTH = 80


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(WIDTH), "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "hsftrain.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _table(lines: list[str]) -> tuple[str, list[str]]:
    """The epoch table's header and its rows."""
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "loss"])
    rows = []
    for line in lines[start + 1 :]:
        if not re.match(r"^\s*\d+/\d+ ", line):
            break
        rows.append(line)
    return lines[start], rows


@pytest.mark.slow
def test_a_short_run_at_80_columns_piped(phantoms: Path, tmp_path: Path) -> None:
    args = [
        "train",
        *(a for a in TINY if not a.startswith("lightning.")),
        "lightning.max_epochs=4",
        "lightning.check_val_every_n_epoch=2",
        "lightning.log_every_n_steps=1",
        "lightning.enable_progress_bar=false",
        "datasets=synth",
        f"datasets.main_path={phantoms}",
        f"datasets.output_path={tmp_path}",
        "run_name=console",
    ]
    done = _run(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    header, rows = _table(lines)
    # every column from the first row: the labels are named before the first validation
    assert header.split() == ["epoch", "loss", "val_loss", "dice", "DG", "CA1", "CA2"] + [
        "CA3",
        "SUB",
        "HEAD",
        "TAIL",
        "lr",
    ]
    # one row per epoch, counted 1/4 to 4/4, none cut or wrapped: each fits the width,
    # and every value ends where its header ends
    assert [r.split()[0] for r in rows] == ["1/4", "2/4", "3/4", "4/4"]
    ends = [m.end() for m in re.finditer(r"\S+", header)]
    for row in [header, *rows]:
        assert len(row) <= WIDTH, row
        assert all(m.end() in ends for m in re.finditer(r"\S+", row)), row
    # epochs without validation leave the validation cells blank (not the last values)
    assert len(rows[0].split()) == 3 and len(rows[2].split()) == 3  # epoch, loss, lr
    assert len(rows[1].split()) == len(header.split())
    # the progress lines count the same way
    said = {int(k) for k in re.findall(r"epoch (\d+)/4, batch", done.stdout + done.stderr)}
    assert said == {1, 2, 3, 4}
    assert not re.search(r"epoch 0\b", done.stdout + done.stderr, re.IGNORECASE)


def test_the_budget_plan_fits_the_terminal_and_train_log_has_it_in_full(tmp_path: Path) -> None:
    import dataclasses
    import io
    import logging

    from hsftrain.core.logs import run_log
    from hsftrain.planning.candidates import Candidate
    from hsftrain.planning.plan import Plan

    chosen = Candidate(8, 3, 2, [96, 112, 96], s_per_step=0.5, val_s=3.0, steps=900, epochs=90)
    other = dataclasses.replace(chosen, f_maps=24, num_levels=4, note="a long note on why not")
    plan = Plan(
        budget_s=3600, device="cpu", fingerprint={}, candidates=[chosen, other],
        chosen=chosen.name, epochs=90, steps=900, check_val_every_n_epoch=1, train_s=0.0,
        planning_s=0.0, why="the largest candidate that fits",
    )  # fmt: skip
    stream = io.StringIO()
    tmp_path.mkdir(exist_ok=True)
    logging.getLogger("hsftrain").setLevel(logging.INFO)
    with run_log(tmp_path) as log_file:
        plan.show("1h", stream, width=64)
    lines = stream.getvalue().splitlines()
    assert all(len(line) <= 64 for line in lines), lines
    assert "    (a long note on why not)" in lines  # on its own line, not cut
    full = log_file.read_text()
    assert "(a long note on why not)" in full and full.count("the largest candidate") == 1
    row = next(line for line in full.splitlines() if line.startswith("f24/L4"))
    assert row.endswith("(a long note on why not)")  # full width in the log


def test_segment_summary_never_cuts_a_subject_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsftrain.inference.pipeline import SubjectReport
    from hsftrain.inference.reporting import summary

    monkeypatch.setenv("COLUMNS", str(WIDTH))
    names = ["sub-0123456789abcdef_ses-baseline_acq-highres_T1w", "sub-02"]
    reports = [
        SubjectReport(n, Path(f"{n}.nii.gz"), "done", 12.5, ["L", "R"], {"L": 3012.0, "R": 2987.0})
        for n in names
    ]
    summary(reports, None)
    out = capsys.readouterr().out
    assert all(len(line) <= WIDTH for line in out.splitlines())
    assert names[0] in out and "…" not in out


@pytest.mark.slow
def test_resuming_a_run_stopped_mid_epoch_says_nothing_alarming(
    phantoms: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    recwarn: pytest.WarningsRecorder,
) -> None:
    import signal

    from hsftrain.training import run as run_module
    from hsftrain.training.guards import FiniteGuard
    from tests.reliability.conftest import cli, train_args

    pressed: list[bool] = []

    class CtrlC(FiniteGuard):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if trainer.current_epoch == 1 and batch_idx == 1 and not pressed:
                pressed.append(True)
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(run_module, "FiniteGuard", CtrlC)
    args = ("run_name=r", "lightning.max_epochs=3", "lightning.log_every_n_steps=1")
    stopped = cli("train", *train_args(phantoms, tmp_path, *args))
    assert stopped.code == 130 and "epoch 2/3, batch 2" in stopped.errors[0], stopped.output
    again = cli("train", f"resume={tmp_path / 'r'}")
    assert again.code == 0, again.output[-3000:]
    assert "unreliable" not in again.output and "weights_only" not in again.output
    assert not [w for w in recwarn if "unreliable" in str(w.message)]
    # the first step after the restore is timed from the restore (not from the clock's zero)
    times = [float(m) for m in re.findall(r"([\d.]+) s/step", "\n".join(again.infos))]
    assert times and max(times) < 120, times


def test_segment_says_its_views_without_a_hint_on_every_run(tmp_path: Path) -> None:
    from tests.inference.conftest import MSD_NAMES, export_tiny, write_crop
    from tests.reliability.conftest import cli

    model = export_tiny(tmp_path / "m" / "tiny.onnx", 3, MSD_NAMES)
    write_crop(tmp_path / "data" / "a.nii.gz")
    args = [f"files.path={tmp_path / 'data'}", "files.pattern=**/*.nii.gz", "qc=false"]
    result = cli("segment", *args, f"model_paths=[{model}]", "segmentation.tta=true")
    assert result.code == 0, result.output[-2000:]
    views = [line for line in result.infos if "view(s)" in line]
    assert views and not [v for v in views if "segmentation.tta" in v], views


def test_left_and_right_maps_of_one_scan_are_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ASHS-like: one image, a label map per side (two patterns reading the same file)."""
    import logging

    import nibabel as nib
    import numpy as np

    from hsftrain.data.discovery import discover

    affine = np.eye(4)
    for k, sid in enumerate(("s1", "s2")):
        nib.save(
            nib.Nifti1Image(np.full((8, 8, 8), k + 1.0, np.float32), affine),
            tmp_path / f"{sid}_tse.nii",
        )
        for side, row in (("L", 0), ("R", 7)):
            label = np.zeros((8, 8, 8), np.uint8)
            label[row, :2, :2] = 1
            nib.save(nib.Nifti1Image(label, affine), tmp_path / f"{sid}_seg_{side}.nii")
    patterns = {
        "left": {"mri": "*_tse.nii", "label": "{id}_seg_L.nii"},
        "right": {"mri": "*_tse.nii", "label": "{id}_seg_R.nii"},
    }
    cfg = {"main_path": str(tmp_path), "datasets": {"a": {"path": ".", "patterns": patterns}}}
    with caplog.at_level(logging.INFO, logger="hsftrain"):
        found = discover(cfg)
    assert len(found.subjects) == 4 and len(found.groups) == 2
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_long_cpu_run_says_its_estimated_time_and_suggests_budget(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsftrain.training import estimate
    from tests.reliability.conftest import cli, train_args

    monkeypatch.setattr(estimate, "MIN_STEPS", 1)  # the tiny run counts as long
    monkeypatch.setattr(estimate, "LONG_S", 0.0)
    out = cli("train", *train_args(phantoms, tmp_path, "run_name=long"))
    assert out.code == 0, out.output[-3000:]
    said = [line for line in out.infos if line.startswith("estimated training time")]
    assert len(said) == 1 and "1 epochs" in said[0], out.infos
    assert [w for w in out.warnings if "budget=" in w and "hours" in w], out.warnings
    # a short run is not timed
    monkeypatch.setattr(estimate, "MIN_STEPS", 300)
    short = cli("train", *train_args(phantoms, tmp_path, "run_name=short"))
    assert not [line for line in short.infos if "estimated training time" in line]


def test_lightning_says_nothing_about_weights_only(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import hsftrain.training.trainer  # noqa: F401  (installs the filter)

    name = "lightning.pytorch.trainer.connectors.checkpoint_connector"
    logger = logging.getLogger(name)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=name):
            logger.info("`weights_only` was not set, defaulting to `False`.")
            logger.info("another line")
    finally:
        logger.removeHandler(caplog.handler)
    said = {r.getMessage() for r in caplog.records if r.name == name}
    assert said == {"another line"}

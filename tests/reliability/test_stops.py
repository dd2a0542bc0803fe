"""SIGTERM and SIGINT stop every mode at a safe point, with exit 128 + the signal, and
leave no process behind: DDP training (``ddp_spawn`` signalled in its launching process,
``ddp`` with every rank signalled as under ``srun``/``torchrun``) saves the epoch in
progress and resumes; ``segment hardware.jobs=2`` finishes the subjects in progress,
writes the volumes table of the finished ones and continues when rerun; ``data prepare``
stops between subjects.

The commands run as a user runs them: the CLI in its own process session, signalled once
the run is under way (a log line, or the first output on disk), then every process of that
session is looked for in ``/proc``.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from hsftrain.core import errors
from hsftrain.training import run as run_module
from hsftrain.training.guards import FiniteGuard
from tests.inference.conftest import MSD_NAMES, export_tiny, write_crop

from .conftest import assert_no_temporaries, assert_user_error, cli, train_args

#: The longest any step here may take on a loaded machine (a hang fails, not blocks).
PATIENCE_S = 240

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="finds left processes through /proc (Linux)"
)


class Command:
    """``hsftrain <args>`` in a new process session, its output collected as it comes."""

    def __init__(self, *args: object, cwd: Path) -> None:
        env = {**os.environ, "COLUMNS": "1000", "PYTHONUNBUFFERED": "1"}
        env.pop("HSFTRAIN_RUN_NAME", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hsftrain.cli", *map(str, args)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        end = time.monotonic() + PATIENCE_S
        while not ready():
            assert self.proc.poll() is None, f"ended before {what}:\n{self.output[-4000:]}"
            assert time.monotonic() < end, f"no {what}:\n{self.output[-4000:]}"
            time.sleep(0.05)

    def wait_for_line(self, text: str) -> None:
        self.wait_until(lambda: any(text in line for line in self.lines), repr(text))

    def signal(self, signum: int, group: bool = False) -> None:
        if group:  # a Ctrl+C in the terminal, or a scheduler stopping the whole job
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def finish(self) -> int:
        """The exit status, once every process of the session has ended."""
        code = self.proc.wait(PATIENCE_S)
        self._reader.join(PATIENCE_S)
        end = time.monotonic() + 30  # helpers (resource tracker) see the end just after
        while session_processes(self.proc.pid) and time.monotonic() < end:
            time.sleep(0.05)
        left = session_processes(self.proc.pid)
        assert not left, f"processes left behind: {left}\n{self.output[-4000:]}"
        return code

    def kill(self) -> None:
        if session_processes(self.proc.pid):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def session_processes(session: int) -> list[str]:
    """Live processes (not zombies) of a session: their pid and command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{entry.name}: {command[:200]}")
    return found


def _busy(session: int, cpu_s: float) -> int:
    """Processes of a session, its leader left out, that have used ``cpu_s`` of CPU time."""
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    for line in session_processes(session):
        pid = int(line.split(":", 1)[0])
        if pid == session:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        busy += (int(fields[11]) + int(fields[12])) / tick >= cpu_s  # utime + stime
    return busy


@pytest.fixture
def command(tmp_path: Path) -> Iterator[Callable[..., Command]]:
    """Starts commands in ``tmp_path``; any still running at the end is killed."""
    started: list[Command] = []

    def start(*args: object) -> Command:
        started.append(Command(*args, cwd=tmp_path))
        return started[-1]

    yield start
    for each in started:
        each.kill()


# --- training: several processes --------------------------------------------------------


def _ddp_args(phantoms: Path, out: Path, strategy: str) -> list[str]:
    return train_args(
        phantoms,
        out,
        "lightning=ddp",
        "lightning.accelerator=cpu",
        "lightning.devices=2",
        f"lightning.strategy={strategy}",
        "lightning.max_epochs=30",
        "run_name=ddp",
    )


def _first_epoch_row(cmd: Command) -> Callable[[], bool]:
    """Whether the per-epoch table has printed its first row (``  1/30 0.9648 ...``)."""
    return lambda: any(re.match(r"\s*1/\d+ \d\.\d{4} ", line) for line in cmd.lines)


def _stop_training(cmd: Command, run: Path) -> None:
    """SIGTERM's exit status and message, a checkpoint, nothing half-written."""
    assert cmd.finish() == 143, cmd.output[-4000:]
    assert "SIGTERM: training stopped at epoch" in cmd.output
    assert f"is saved in {run / 'checkpoints' / 'last.ckpt'}" in cmd.output
    assert f"Continue with: hsftrain train resume={run}" in cmd.output
    assert "Traceback" not in cmd.output
    assert_no_temporaries(run)


@pytest.fixture(scope="module")
def ddp_stopped(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``ddp_spawn`` run (2 CPU processes) stopped by SIGTERM to its launching process
    (which does not train itself) once the first epoch is done."""
    out = tmp_path_factory.mktemp("ddp_spawn")
    cmd = Command("train", *_ddp_args(phantoms, out, "ddp_spawn"), cwd=out)
    try:
        cmd.wait_until(_first_epoch_row(cmd), "row of epoch 1")  # the processes train
        cmd.signal(signal.SIGTERM)
        _stop_training(cmd, out / "ddp")
        yield out / "ddp"
    finally:
        cmd.kill()


@pytest.mark.slow
def test_ddp_spawn_sigterm_to_the_launcher_saves_the_epoch(ddp_stopped: Path) -> None:
    saved = torch.load(ddp_stopped / "checkpoints" / "last.ckpt", weights_only=False)
    assert 1 <= saved["global_step"] < 30  # stopped mid-run, not after every epoch
    assert not (ddp_stopped / "metrics.json").exists()


@pytest.mark.slow
def test_a_stopped_ddp_spawn_run_resumes(
    ddp_stopped: Path, command: Callable[..., Command]
) -> None:
    saved = torch.load(ddp_stopped / "checkpoints" / "last.ckpt", weights_only=False)
    epochs = saved["epoch"] + 2
    again = command("train", f"resume={ddp_stopped}", f"lightning.max_epochs={epochs}")
    assert again.finish() == 0, again.output[-4000:]
    assert "unreliable" not in again.output  # Lightning's warning on a mid-epoch resume
    last = torch.load(ddp_stopped / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] > saved["global_step"]
    assert (ddp_stopped / "metrics.json").is_file()


@pytest.mark.slow
def test_ddp_every_rank_signalled_stops_at_the_same_batch(
    phantoms: Path, tmp_path: Path, command: Callable[..., Command]
) -> None:
    # lightning=ddp's own launch: rank 0 starts rank 1; a signal to the whole process
    # group reaches every rank, as srun or torchrun deliver it
    cmd = command("train", *_ddp_args(phantoms, tmp_path, "ddp"))
    cmd.wait_until(_first_epoch_row(cmd), "row of epoch 1")
    cmd.signal(signal.SIGTERM, group=True)
    _stop_training(cmd, tmp_path / "ddp")
    saved = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", weights_only=False)
    assert 1 <= saved["global_step"] < 30


@pytest.mark.slow
def test_a_second_ctrl_c_stops_training_at_once(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class CtrlCTwice(FiniteGuard):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if trainer.current_epoch == 1 and batch_idx == 1:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)  # a second press (the window is 0 here)

    monkeypatch.setattr(run_module, "FiniteGuard", CtrlCTwice)
    monkeypatch.setattr(errors, "SAME_SIGNAL_S", -1.0)
    result = cli("train", *train_args(phantoms, tmp_path, "run_name=c", "lightning.max_epochs=3"))
    message = assert_user_error(result, "SIGINT", "at once", "after epoch 1", code=130)
    assert f"hsftrain train resume={tmp_path / 'c'}" in message
    assert_no_temporaries(tmp_path)


# --- segment ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("model") / "tiny.onnx", 3, MSD_NAMES)


def _cohort(root: Path, n: int, shape: tuple[int, int, int] = (20, 28, 20)) -> Path:
    for i in range(n):
        write_crop(root / f"sub-{i:02d}" / f"sub-{i:02d}_T1w.nii.gz", shape=shape, seed=i)
    return root


def _segment_args(root: Path, model: Path, views: int, *extra: str) -> list[str]:
    return [
        f"files.path={root}",
        "files.pattern=**/*_T1w.nii.gz",
        f"model_paths=[{model}]",
        "hardware=cpu",
        "qc=false",
        "segmentation.tta=true",
        f"segmentation.test_time_num_aug={views}",  # slower subjects: a stop finds work left
        *extra,
    ]


def _segmented(root: Path) -> set[str]:
    return {p.parent.name for p in root.glob("*/*_hippocampus_seg.nii.gz")}


def _table_subjects(table: Path) -> set[str]:
    with open(table, newline="") as f:
        return {row["subject"].split("/")[0] for row in csv.DictReader(f)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, group",
    [(signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["sigterm", "sigterm-group", "ctrl-c"],
)
def test_segment_workers_stop_write_the_finished_and_a_rerun_continues(
    signum: int, group: bool, tmp_path: Path, model: Path, command: Callable[..., Command]
) -> None:
    root = _cohort(tmp_path / "data", 12)
    args = _segment_args(root, model, 4, "hardware.jobs=2")
    cmd = command("segment", *args)
    cmd.wait_until(lambda: bool(_segmented(root)), "finished subject")
    cmd.signal(signum, group)
    assert cmd.finish() == 128 + signum, cmd.output[-4000:]
    done = _segmented(root)
    assert 0 < len(done) < 12
    assert f"{signal.Signals(signum).name}: segment stopped with {12 - len(done)} of the 12" in (
        cmd.output
    )
    assert "Rerun the same command" in cmd.output and "Traceback" not in cmd.output
    assert _table_subjects(root / "volumes.csv") == done
    assert_no_temporaries(root)

    stamps = {p: p.stat().st_mtime_ns for p in root.glob("*/*_hippocampus_seg.nii.gz")}
    result = cli("segment", *args)
    assert result.code == 0, result.output[-3000:]
    assert _table_subjects(root / "volumes.csv") == {f"sub-{i:02d}" for i in range(12)}
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # skipped, not redone


@pytest.mark.slow
def test_a_second_ctrl_c_kills_the_segment_workers_at_once(
    tmp_path: Path, model: Path, command: Callable[..., Command]
) -> None:
    root = _cohort(tmp_path / "data", 4, shape=(64, 80, 64))  # seconds per subject
    cmd = command("segment", *_segment_args(root, model, 40, "hardware.jobs=2"))
    cmd.wait_for_line("worker process(es)")
    # the line comes before the workers start: wait until both are at work on a subject, so
    # that the first press has work to finish (else it stops at once by itself)
    cmd.wait_until(lambda: _busy(cmd.proc.pid, cpu_s=2.0) >= 2, "two busy workers")
    cmd.signal(signal.SIGINT)
    cmd.wait_for_line("SIGINT received")
    time.sleep(errors.SAME_SIGNAL_S + 0.2)  # a second press, not the first one delivered twice
    cmd.signal(signal.SIGINT)
    assert cmd.finish() == 130, cmd.output[-4000:]
    said = [line.strip() for line in cmd.lines if "SIGINT" in line]
    assert any("SIGINT: segment stopped at once" in line for line in said), said
    assert not _segmented(root) and not (root / "volumes.csv").exists()


def test_one_process_segment_finishes_the_subject_in_progress(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsftrain.inference import api

    root = _cohort(tmp_path / "data", 4)
    real = api.run_subject

    def signalled(*args, **kwargs):  # type: ignore[no-untyped-def]
        if len(_segmented(root)) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # while the second subject is segmented
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "run_subject", signalled)
    result = cli("segment", *_segment_args(root, model, 0))
    assert_user_error(result, "SIGTERM: segment stopped with 2 of the 4", "volumes.csv", code=143)
    assert _segmented(root) == _table_subjects(root / "volumes.csv") == {"sub-00", "sub-01"}


# --- data prepare -----------------------------------------------------------------------


@pytest.mark.slow
def test_data_prepare_stops_between_subjects(
    tmp_path: Path, command: Callable[..., Command]
) -> None:
    from hsftrain.data.synth import write_phantoms

    data, out = tmp_path / "phantoms", tmp_path / "out"
    write_phantoms(data, n=40, shape=(32, 40, 32), seed=0)
    cache = out / "prepared"
    args = ["datasets=synth", f"datasets.main_path={data}", f"datasets.output_path={out}"]

    def entries() -> list[Path]:
        return [p for p in cache.glob("*/meta.json") if not p.parent.name.startswith(".")]

    cmd = command("data", "prepare", *args)
    cmd.wait_until(lambda: bool(entries()), "prepared subject")
    cmd.signal(signal.SIGTERM)
    assert cmd.finish() == 143, cmd.output[-4000:]
    kept = len(entries())
    assert 0 < kept < 40
    assert f"SIGTERM: data preparation stopped after {kept} of 40 subject(s)" in cmd.output
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no half entry

    result = cli("data", "prepare", *args)
    assert result.code == 0, result.output[-3000:]
    assert len(entries()) == 40


def test_sigterm_outside_a_stop_point_unwinds_like_ctrl_c(
    tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsftrain.inference import api

    real = api.settings_from_config

    def signalled(cfg):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGTERM)  # while the configuration is read
        return real(cfg)

    monkeypatch.setattr(api, "settings_from_config", signalled)
    root = _cohort(tmp_path / "data", 1)
    result = cli("segment", *_segment_args(root, model, 0))
    assert_user_error(result, "interrupted (SIGTERM): stopped before the end", code=143)
    assert not _segmented(root)

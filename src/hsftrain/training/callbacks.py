"""Training callbacks: the per-epoch table, a progress line, and a hook for the moment
training really starts.

* :class:`EpochTable` prints one row per epoch (losses, mean and per-label Dice in the
  model's label order) with fixed-width columns, wrapped to the terminal width, so rows
  stay aligned in terminals of any width and in ``train.log``.
* :class:`EpochBar` is the progress bar, epochs counted from 1 as everywhere else.
* :class:`StepProgress` logs a line every ``every`` steps with the step time and the
  estimated time left (epoch and run) when no progress bar is shown; with the bar, the
  same lines go to ``train.log`` only.
* :class:`OnTrainStart` runs a function once training starts (after a checkpoint has
  been restored): a resumed run writes nothing before that.
* :class:`RunCheckpoints` writes ``best-epochNNN.ckpt`` (lowest validation loss) and a
  ``last.ckpt`` that follows every validation and the end of training.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

log = logging.getLogger(__name__)

#: Narrowest cell (a Dice ``0.812``).
CELL = 5
#: The header is repeated after this many rows.
HEADER_EVERY = 20


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def table_lines(
    columns: Sequence[tuple[str, str]], width: int, lead: int = 0
) -> tuple[list[str], list[str]]:
    """Header and row lines of one table row, each cell right-aligned to
    ``max(len(header), len(value))``, wrapped into several lines when wider than
    ``width`` (continuation lines indented by the first ``lead`` cells).

    Args:
        columns: ``(header, value)`` per cell.
        width: the terminal width.
        lead: cells repeated as indentation on continuation lines.
    """
    cells = [(h, v, max(len(h), len(v), CELL)) for h, v in columns]
    indent = sum(w + 1 for _, _, w in cells[:lead])
    headers: list[str] = []
    rows: list[str] = []
    head: list[str] = []
    row: list[str] = []
    used = 0
    for i, (h, v, w) in enumerate(cells):
        if head and used + w + 1 > width and i > lead:
            headers.append(" ".join(head))
            rows.append(" ".join(row))
            head, row = (
                [" " * (indent - 1)] if indent else [],
                [" " * (indent - 1)] if indent else [],
            )
            used = indent
        head.append(h.rjust(w))
        row.append(v.rjust(w))
        used += w + 1
    headers.append(" ".join(head))
    rows.append(" ".join(row))
    return headers, rows


class EpochTable(L.Callback):
    """One row per epoch: the epoch as ``k/N`` (counted from 1, as in every message of a
    run), train and validation loss (``loss``, ``val_loss``), mean Dice (``dice``) and the
    Dice of each label, learning rate.

    Every column is there from the first row (labels in the model's order, from
    ``pl_module.dice_names`` or ``class_names``); an epoch without validation leaves the
    validation cells blank instead of repeating the last values. Rows are written to
    ``stream`` (stderr) in fixed-width columns fitted to the terminal width (80 columns
    when it is not a terminal), and logged to ``train.log`` (file handlers only).
    """

    def __init__(self, stream: TextIO | None = None, width: int | None = None) -> None:
        self.stream = stream
        self.width = width
        self.rows: list[dict[str, float]] = []
        self._validated = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def _columns(
        self, row: dict[str, float], labels: Sequence[str], epochs: int | None
    ) -> list[tuple[str, str]]:
        def cell(key: str, digits: int) -> str:
            return f"{row[key]:.{digits}f}" if key in row else ""

        epoch = str(int(row["epoch"]) + 1)
        if epochs:  # the same width on every row
            epoch = f"{epoch}/{epochs}".rjust(2 * len(str(epochs)) + 1)
        cols = [
            ("epoch", epoch),
            ("loss", cell("train/loss_epoch", 4)),
            ("val_loss", cell("val/epoch/loss", 4)),
            ("dice", cell("val/dice_mean", 3)),
        ]
        cols += [(name, cell(f"val/dice/{name}", 3)) for name in labels]
        cols.append(("lr", f"{row['lr']:.1e}" if "lr" in row else ""))
        return cols

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        if not self._validated:  # Lightning keeps the last validation's values
            m = {k: v for k, v in m.items() if not k.startswith("val/")}
        self._validated = False
        row = {"epoch": float(trainer.current_epoch), **m}
        self.rows.append(row)
        found = [k.removeprefix("val/dice/") for k in m if k.startswith("val/dice/")]
        order = [str(n) for n in getattr(pl_module, "dice_names", None) or []]
        if not order:
            order = [str(n) for n in (getattr(pl_module, "class_names", None) or [])[1:]]
        labels = [*order, *(n for n in found if n not in order)]
        width = self.width or _terminal_width()
        max_epochs = getattr(trainer, "max_epochs", None)
        epochs = int(max_epochs) if isinstance(max_epochs, int) and max_epochs > 0 else None
        headers, lines = table_lines(self._columns(row, labels, epochs), width, lead=1)
        show_header = (len(self.rows) - 1) % HEADER_EVERY == 0
        text = [*headers, *lines] if show_header else lines
        if trainer.is_global_zero:
            stream = self.stream or sys.stderr
            stream.write("\n".join(text) + "\n")
            stream.flush()
            for line in text:
                log.info("%s", line, extra={"file_only": True})


def _terminal_width() -> int:
    """Columns of the terminal (``COLUMNS`` when set), 80 when output is not a terminal."""
    return shutil.get_terminal_size((80, 24)).columns


class EpochBar(RichProgressBar):
    """Lightning's progress bar counting epochs from 1 (``Epoch k/N``, as the table and
    the log lines do), showing only the step loss: the epoch table has the rest, and a
    long list of metrics wrapped over several lines in a narrow terminal."""

    def _get_train_description(self, current_epoch: int) -> str:
        epochs = self.trainer.max_epochs
        text = f"Epoch {current_epoch + 1}" + (f"/{epochs}" if epochs and epochs > 0 else "")
        return f"{text:{len(self.validation_description)}}"

    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        loss = trainer.progress_bar_metrics.get("train/loss_step")
        return {} if loss is None else {"loss": round(float(loss), 4)}


class StepProgress(L.Callback):
    """A log line every ``every`` training steps: epoch, batch, seconds per step, loss, and
    the estimated time left in the epoch and in the run.

    Args:
        every: batches between two lines.
        console: also show the lines on the terminal (True when no progress bar is
            shown); otherwise they go to file handlers (``train.log``) only.
    """

    def __init__(self, every: int = 10, console: bool = True) -> None:
        self.every = max(1, int(every))
        self.console = console
        self._last = 0.0
        self._steps = 0
        self._step_time: float | None = None
        self._val_start = 0.0
        self._val_time = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.perf_counter()  # a run resumed mid-epoch starts no epoch
        self._steps = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.perf_counter()
        self._steps = 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_time = time.perf_counter() - self._val_start

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._steps += 1
        batches = trainer.num_training_batches
        last = isinstance(batches, int) and batch_idx + 1 >= batches
        if (batch_idx + 1) % self.every and not last:
            return
        now = time.perf_counter()
        per_step = (now - self._last) / max(self._steps, 1)
        self._step_time = per_step
        self._last, self._steps = now, 0
        line = self.line(trainer, batch_idx, per_step, outputs)
        if trainer.is_global_zero:
            log.info("%s", line, extra={"file_only": not self.console})

    def line(self, trainer: L.Trainer, batch_idx: int, per_step: float, outputs: Any) -> str:
        """The progress line after batch ``batch_idx`` of the current epoch."""
        batches = trainer.num_training_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        epoch = trainer.current_epoch
        parts = [f"epoch {epoch + 1}" + (f"/{epochs}" if epochs else "")]
        finite = isinstance(batches, int)
        parts.append(f"batch {batch_idx + 1}" + (f"/{batches}" if finite else ""))
        parts.append(f"{per_step:.2f} s/step")
        loss: Any = outputs.get("loss") if isinstance(outputs, dict) else outputs
        try:
            parts.append(f"loss {float(loss):.4f}")
        except (TypeError, ValueError):
            pass
        if finite:
            left_epoch = (batches - batch_idx - 1) * per_step
            parts.append(f"epoch ETA {_fmt_time(left_epoch)}")
            if epochs:
                per_epoch = batches * per_step + self._val_time
                left_run = left_epoch + self._val_time + (epochs - epoch - 1) * per_epoch
                parts.append(f"run ETA {_fmt_time(left_run)}")
        return ", ".join(parts)


class OnTrainStart(L.Callback):
    """Calls ``action()`` once, when training starts (after any checkpoint restore), in
    the global rank 0. ``action`` must pickle (a module-level function, a bound method,
    a ``functools.partial``; not a local function): ``ddp_spawn`` sends the callbacks to
    the processes it starts."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.started = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.started:
            self.started = True
            if trainer.is_global_zero:
                self.action()


class RunCheckpoints(ModelCheckpoint):
    """``checkpoints/best-epochNNN.ckpt`` (the lowest ``val/epoch/loss``; NNN counts from 1) and
    ``checkpoints/last.ckpt``, rewritten after every validation and when training ends.

    Lightning's own ``save_last`` (2.6) rewrites ``last.ckpt`` only when it writes a new best
    checkpoint, so after the best epoch ``last.ckpt`` stayed behind and ``resume=`` went
    back to the best epoch instead of continuing from the last one.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best-epoch{epoch:03d}",
            auto_insert_metric_name=False,
            monitor="val/epoch/loss",
            mode="min",
            save_last=True,
        )

    def format_checkpoint_name(
        self,
        metrics: dict[str, Any],
        filename: str | None = None,
        ver: int | None = None,
        prefix: str | None = None,
    ) -> str:
        """The file name with the epoch counted from 1, as in the epoch table and the logs
        (Lightning counts from 0)."""
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)

    # Lightning saves at the end of the training epoch when every epoch is validated once,
    # else at the end of each validation; last.ckpt follows at the same moment, after the
    # best (a save marks the step as saved, so saving last.ckpt first would skip the best)
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_too(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_too(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_too(trainer)  # epochs after the last validation

    def _save_last_too(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # a new best also wrote last.ckpt
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

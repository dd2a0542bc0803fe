"""The per-epoch table, the progress line and the run's checkpoints."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from hsftrain.training.callbacks import EpochTable, RunCheckpoints, StepProgress, table_lines

HSF = ["background", "DG", "CA1", "CA2", "CA3", "SUB", "HEAD", "TAIL"]


def _trainer(metrics: dict[str, float], epoch: int = 0, **extra: object) -> SimpleNamespace:
    values = {k: torch.tensor(v) for k, v in metrics.items()}
    return SimpleNamespace(
        callback_metrics=values,
        current_epoch=epoch,
        is_global_zero=True,
        sanity_checking=False,
        **extra,
    )


def _metrics(scale: float) -> dict[str, float]:
    names = ["TAIL", "CA1", "DG", "SUB", "HEAD", "CA3", "CA2"]  # not in label order
    out = {f"val/dice/{n}": scale * (i + 1) / 10 for i, n in enumerate(names)}
    out.update({"train/loss_epoch": scale, "val/epoch/loss": scale / 2, "val/dice_mean": 0.5})
    out["lr"] = 1e-3 * scale
    return out


def test_rows_stay_aligned_in_label_order_within_80_columns() -> None:
    stream = io.StringIO()
    table = EpochTable(stream=stream, width=80)
    module = SimpleNamespace(class_names=HSF)
    for epoch, scale in enumerate([0.9, 0.123456, 0.5]):
        trainer = _trainer(_metrics(scale), epoch)
        table.on_validation_epoch_end(trainer, module)  # type: ignore[arg-type]
        table.on_train_epoch_end(trainer, module)  # type: ignore[arg-type]
    lines = stream.getvalue().splitlines()
    header, rows = lines[0], lines[1:]
    assert header.split() == ["epoch", "loss", "val_loss", "dice", *HSF[1:], "lr"]
    assert len(rows) == 3 and all(len(r) == len(header) <= 80 for r in rows)
    # every value ends where its header ends
    ends = [header.index(h) + len(h) for h in ("DG", "TAIL")]
    for row in rows:
        cells = row.split()
        assert row.index(cells[4]) + len(cells[4]) == ends[0]


def test_narrow_terminal_wraps_without_truncating_names() -> None:
    columns = [("epoch", "3"), *((f"subfield_{i}", "0.812") for i in range(8))]
    headers, rows = table_lines(columns, 40, lead=1)
    assert len(headers) == len(rows) > 1
    assert all(len(line) <= 40 for line in headers + rows)
    assert " ".join(headers).split() == [c for c, _ in columns]


def test_table_lines_go_to_the_run_log(caplog) -> None:  # type: ignore[no-untyped-def]
    logger = logging.getLogger("hsftrain")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="hsftrain"):
            EpochTable(stream=io.StringIO(), width=100).on_train_epoch_end(
                _trainer(_metrics(0.5)),
                SimpleNamespace(class_names=HSF),  # type: ignore[arg-type]
            )
    finally:
        logger.removeHandler(caplog.handler)
    records = {id(r): r for r in caplog.records if r.name == "hsftrain.training.callbacks"}
    assert len(records) == 2  # header and row
    assert all(getattr(r, "file_only", False) for r in records.values())


def test_progress_line_has_step_time_and_eta() -> None:
    progress = StepProgress(every=5)
    trainer = _trainer({}, epoch=1, num_training_batches=40, max_epochs=10)
    progress._val_time = 2.0
    line = progress.line(trainer, 19, 0.5, {"loss": torch.tensor(0.25)})  # type: ignore[arg-type]
    assert line == (
        "epoch 2/10, batch 20/40, 0.50 s/step, loss 0.2500, epoch ETA 0:10, run ETA 3:08"
    )  # 20 steps x 0.5 s = 10 s; + 2 s validation + 8 epochs x (40 x 0.5 + 2) s = 188 s


class _Worsening(L.LightningModule):
    """A one-weight model whose validation loss rises every epoch: the best is epoch 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return (self.w - 1).pow(2).sum()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/epoch/loss", float(self.current_epoch), on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(1, 1)), batch_size=1)


@pytest.mark.parametrize("val_every", [1, 2])
def test_last_checkpoint_follows_every_validation_after_the_best(
    tmp_path: Path, val_every: int
) -> None:
    """Lightning's save_last left last.ckpt at the best epoch; resume= must continue from
    the last one (Lightning saves at the end of the epoch when each epoch is validated,
    else after each validation)."""
    checkpoints = RunCheckpoints(str(tmp_path / "checkpoints"))
    trainer = L.Trainer(
        max_epochs=2 * val_every + 1,
        check_val_every_n_epoch=val_every,
        callbacks=[checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        accelerator="cpu",
    )
    trainer.fit(_Worsening())
    first = val_every  # the first validated epoch (counted from 1): the lowest loss
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == [f"best-epoch{first:03d}.ckpt", "last.ckpt"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    best = torch.load(tmp_path / "checkpoints" / files[0], weights_only=False)
    assert last["global_step"] == 2 * (2 * val_every + 1)  # two steps per epoch, every epoch
    assert best["global_step"] == 2 * first  # two steps in each of the first epochs
    assert not torch.equal(last["state_dict"]["w"], best["state_dict"]["w"])


def test_progress_bar_counts_epochs_from_one_and_shows_only_the_loss() -> None:
    from hsftrain.training.callbacks import EpochBar

    bar = EpochBar()
    bar._trainer = SimpleNamespace(max_epochs=5)  # type: ignore[assignment]
    assert bar._get_train_description(0).strip() == "Epoch 1/5"
    assert bar._get_train_description(4).strip() == "Epoch 5/5"
    trainer = SimpleNamespace(progress_bar_metrics={"train/loss_step": 0.123456, "v": 1.0})
    assert bar.get_metrics(trainer, None) == {"loss": 0.1235}  # type: ignore[arg-type]


def test_epochs_without_validation_leave_the_validation_cells_blank() -> None:
    stream = io.StringIO()
    table = EpochTable(stream=stream, width=100)
    module = SimpleNamespace(class_names=HSF)
    for epoch in range(3):
        trainer = _trainer(_metrics(0.5), epoch, max_epochs=3)
        if epoch == 1:
            table.on_validation_epoch_end(trainer, module)  # type: ignore[arg-type]
        table.on_train_epoch_end(trainer, module)  # type: ignore[arg-type]
    header, *rows = stream.getvalue().splitlines()
    assert header.split() == ["epoch", "loss", "val_loss", "dice", *HSF[1:], "lr"]
    assert [r.split() for r in rows] == [
        ["1/3", "0.5000", "5.0e-04"],
        ["2/3", "0.5000", "0.2500", "0.500", *rows[1].split()[4:11], "5.0e-04"],
        ["3/3", "0.5000", "5.0e-04"],
    ]
    assert all(len(r) == len(header) for r in rows)

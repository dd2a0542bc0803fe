"""Training callbacks: a per-epoch summary table."""

from __future__ import annotations

import lightning as L
from rich.console import Console
from rich.table import Table


class EpochTable(L.Callback):
    """Prints one table row per validation epoch: losses, mean and per-label Dice, LR."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        row = {"epoch": float(trainer.current_epoch), **m}
        self.rows.append(row)
        dice = sorted(k for k in m if k.startswith("val/dice/"))
        table = Table(show_edge=False, pad_edge=False, show_header=len(self.rows) == 1)
        cols = ["epoch", "train/loss_epoch", "val/epoch/loss", "val/dice_mean", *dice]
        for col in cols:
            table.add_column(
                col.replace("val/dice/", "dice ").replace("/epoch/", " "), justify="right"
            )
        cells = [str(trainer.current_epoch)] + [
            f"{row[c]:.4f}" if c in row else "-" for c in cols[1:]
        ]
        table.add_row(*cells)
        self.console.print(table)

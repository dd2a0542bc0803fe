"""The forgiving loss: one model, datasets labelled at different granularities.

Each dataset has a ``(G, C)`` group table (:func:`hsftrain.data.labels.group_table`): the
model's C class probabilities are summed into the G classes that dataset labels, and the
loss compares those with the dataset's own labels. A model predicting CA3 where a "1/23"
dataset says "CA2/3" is not penalised; neither is HEAD where a dataset has no HEAD label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hsftrain.losses.tversky import FocalTverskyLoss


def group_probs(probs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Sum ``(B, C, ...)`` probabilities into ``(B, G, ...)`` with a ``(G, C)`` table."""
    return torch.einsum("gc,bc...->bg...", table.to(probs.dtype), probs)


class ForgivingLoss(nn.Module):
    """Focal-Tversky on group-summed probabilities, one group table per dataset.

    Args:
        tables: ``{dataset index: (G, C) table}``; a batch item of dataset ``d`` uses
            ``tables[d]``.
        base: the loss applied to ``(probs, onehot)``.
    """

    def __init__(self, tables: dict[int, torch.Tensor], base: nn.Module | None = None) -> None:
        super().__init__()
        self.base = base or FocalTverskyLoss()
        for d, table in tables.items():
            self.register_buffer(f"table_{d}", torch.as_tensor(table, dtype=torch.float32))

    def table(self, dataset: int) -> torch.Tensor:
        return getattr(self, f"table_{dataset}")

    def forward(
        self, probs: torch.Tensor, label_map: torch.Tensor, dataset: torch.Tensor
    ) -> torch.Tensor:
        """Mean loss over the batch.

        Args:
            probs: ``(B, C, X, Y, Z)`` softmax probabilities.
            label_map: ``(B, X, Y, Z)`` integer labels in each dataset's own classes.
            dataset: ``(B,)`` dataset index of each item.
        """
        losses = []
        for b in range(probs.shape[0]):
            table = self.table(int(dataset[b]))
            grouped = group_probs(probs[b : b + 1], table)
            onehot = one_hot(label_map[b : b + 1], table.shape[0])
            losses.append(self.base(grouped, onehot))
        return torch.stack(losses).mean()


def one_hot(label_map: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, X, Y, Z)`` integer labels to ``(B, C, X, Y, Z)`` float one-hot."""
    return F.one_hot(label_map.long(), num_classes).movedim(-1, 1).float()

"""The forgiving loss: one model, datasets labelled at different granularities.

Each dataset has a ``(G, C)`` group table (:func:`hsftrain.data.labels.group_table`): the
model's C class probabilities are summed into the G classes that dataset labels, and the
loss compares those with the dataset's own labels. A model predicting CA3 where a "1/23"
dataset says "CA2/3" is not penalised; neither is HEAD where a dataset has no HEAD label.

The tables of all datasets are stacked into one ``(D, G_max, C)`` buffer (rows past a
dataset's G are zero and marked invalid), so a batch mixing datasets is handled with
tensor indexing on the device: no per-item read of the dataset id on the host. Label maps
that lack some of their dataset's classes have tables of their own, indexed after the
datasets' (:mod:`hsftrain.losses.tables`): the lacking classes go to background there and
their rows, which no model class reaches, are invalid too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hsftrain.losses.tversky import FocalTverskyLoss


def group_probs(probs: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Sum ``(B, C, ...)`` probabilities into ``(B, G, ...)`` with a ``(G, C)`` table, or
    with one table per item, ``(B, G, C)``."""
    table = table.to(probs.dtype)
    if table.ndim == 3:
        return torch.einsum("bgc,bc...->bg...", table, probs)
    return torch.einsum("gc,bc...->bg...", table, probs)


class ForgivingLoss(nn.Module):
    """Focal-Tversky on group-summed probabilities, one group table per dataset.

    Args:
        tables: ``{table index: (G, C) table}``; a batch item of table ``d`` (its dataset's,
            or that of its lacking classes) uses ``tables[d]``.
        base: the loss applied to ``(probs, onehot)`` of each item.
        ce_weight: weight of a cross-entropy term added to ``base`` (0: none), computed on
            the same grouped probabilities (so it forgives the same way): the mean over
            voxels of ``-log p(labelled group)``.

    Attributes:
        tables: ``(D, G_max, C)`` stacked tables (buffer), indexed by dataset index.
        valid: ``(D, G_max)`` bool, which rows are real classes of that dataset (rows
            that some model class reaches).
    """

    tables: torch.Tensor
    valid: torch.Tensor

    def __init__(
        self,
        tables: dict[int, torch.Tensor],
        base: FocalTverskyLoss | None = None,
        ce_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.base = base or FocalTverskyLoss()
        self.ce_weight = float(ce_weight)
        shapes = {tuple(torch.as_tensor(t).shape[1:]) for t in tables.values()}
        if len(shapes) != 1:
            raise ValueError(f"group tables disagree on the number of model classes: {shapes}")
        n_datasets = max(tables) + 1
        g_max = max(torch.as_tensor(t).shape[0] for t in tables.values())
        (c,) = shapes.pop()
        stacked = torch.zeros(n_datasets, g_max, c)
        valid = torch.zeros(n_datasets, g_max, dtype=torch.bool)
        for d, table in tables.items():
            t = torch.as_tensor(table, dtype=torch.float32)
            stacked[d, : t.shape[0]] = t
            valid[d, : t.shape[0]] = t.abs().sum(1) > 0  # rows no model class reaches: out
        self.register_buffer("tables", stacked)
        self.register_buffer("valid", valid)
        self.sizes = {int(d): int(torch.as_tensor(t).shape[0]) for d, t in tables.items()}

    def table(self, dataset: int) -> torch.Tensor:
        """The ``(G, C)`` table of one dataset."""
        return self.tables[dataset, : self.sizes[dataset]]

    def grouped(self, probs: torch.Tensor, dataset: torch.Tensor) -> torch.Tensor:
        """``(B, G_max, X, Y, Z)`` probabilities of each item in its dataset's classes
        (padding rows are zero)."""
        return group_probs(probs, self.tables[dataset.to(self.tables.device).long()])

    def forward(
        self, probs: torch.Tensor, label_map: torch.Tensor, dataset: torch.Tensor
    ) -> torch.Tensor:
        """Mean loss over the batch.

        Args:
            probs: ``(B, C, X, Y, Z)`` softmax probabilities.
            label_map: ``(B, X, Y, Z)`` integer labels in each dataset's own classes.
            dataset: ``(B,)`` dataset index of each item.
        """
        dataset = dataset.to(self.tables.device).long()
        grouped = self.grouped(probs, dataset)
        onehot = one_hot(label_map, self.tables.shape[1])
        loss = self.base.per_item(grouped, onehot, self.valid[dataset]).mean()
        if self.ce_weight > 0:
            # the labelled group's probability; padding rows never carry a label
            picked = (grouped * onehot).sum(1)
            loss = loss - self.ce_weight * picked.clamp_min(1e-6).log().mean()
        return loss


def one_hot(label_map: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, X, Y, Z)`` integer labels to ``(B, C, X, Y, Z)`` float one-hot."""
    return F.one_hot(label_map.long(), num_classes).movedim(-1, 1).float()

"""Tversky and Focal-Tversky losses on class probabilities."""

from __future__ import annotations

import torch
from torch import nn


def tversky_index(
    probs: torch.Tensor,
    onehot: torch.Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1e-6,
    per_item: bool = False,
) -> torch.Tensor:
    """Per-class Tversky index ``TP / (TP + alpha FP + beta FN)``.

    Args:
        probs: ``(B, C, X, Y, Z)`` probabilities.
        onehot: ``(B, C, X, Y, Z)`` one-hot target.
        per_item: keep the batch dimension.

    Returns:
        ``(C,)`` index per class, statistics summed over batch and voxels; ``(B, C)``
        (statistics per item) when ``per_item``.
    """
    dims = tuple(range(2, probs.ndim)) if per_item else (0, *range(2, probs.ndim))
    tp = (probs * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


class FocalTverskyLoss(nn.Module):
    """``mean_c (1 - TI_c) ** gamma``; ``gamma = 1`` is the plain Tversky loss.

    Args:
        alpha: weight of false positives (0.3).
        beta: weight of false negatives (0.7).
        gamma: focal exponent (0.75).
        include_background: average over class 0 too.
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 0.75,
        include_background: bool = True,
        smooth: float = 1e-6,
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.include_background = include_background
        self.smooth = smooth

    def forward(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        ti = tversky_index(probs, onehot, self.alpha, self.beta, self.smooth)
        if not self.include_background:
            ti = ti[1:]
        return ((1 - ti).clamp_min(0) ** self.gamma).mean()

    def per_item(
        self, probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Loss of each batch item over its own valid classes (no host synchronisation).

        Args:
            probs, onehot: ``(B, C, X, Y, Z)``.
            valid: ``(B, C)`` bool, the classes that count for each item (items labelled
                with fewer classes than C are padded with invalid ones).

        Returns:
            ``(B,)`` losses: ``mean_{valid c} (1 - TI_bc) ** gamma``.
        """
        ti = tversky_index(probs, onehot, self.alpha, self.beta, self.smooth, per_item=True)
        mask = valid.to(ti.dtype)
        if not self.include_background:
            mask = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, 1:]], dim=1)
        # invalid (padding) classes have TI = 1: (1 - TI) ** gamma there would send an
        # infinite gradient (gamma < 1) through the zero mask, i.e. NaN; count 1 instead
        gap = torch.where(mask > 0, (1 - ti).clamp_min(0), torch.ones_like(ti))
        terms = gap**self.gamma * mask
        return terms.sum(1) / mask.sum(1).clamp_min(1)


class TverskyLoss(FocalTverskyLoss):
    """Tversky loss ``mean_c (1 - TI_c)``."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, **kwargs: object) -> None:
        super().__init__(alpha, beta, gamma=1.0, **kwargs)  # type: ignore[arg-type]

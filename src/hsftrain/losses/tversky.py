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
) -> torch.Tensor:
    """Per-class Tversky index ``TP / (TP + alpha FP + beta FN)``.

    Args:
        probs: ``(B, C, X, Y, Z)`` probabilities.
        onehot: ``(B, C, X, Y, Z)`` one-hot target.

    Returns:
        ``(C,)`` index per class, statistics summed over batch and voxels.
    """
    dims = (0, *range(2, probs.ndim))
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


class TverskyLoss(FocalTverskyLoss):
    """Tversky loss ``mean_c (1 - TI_c)``."""

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, **kwargs: object) -> None:
        super().__init__(alpha, beta, gamma=1.0, **kwargs)  # type: ignore[arg-type]

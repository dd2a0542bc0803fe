"""Segmentation losses: Tversky, Focal-Tversky and the granularity-forgiving loss."""

from hsftrain.losses.forgiving import ForgivingLoss, group_probs, one_hot
from hsftrain.losses.tversky import FocalTverskyLoss, TverskyLoss, tversky_index

__all__ = [
    "FocalTverskyLoss",
    "ForgivingLoss",
    "TverskyLoss",
    "group_probs",
    "one_hot",
    "tversky_index",
]

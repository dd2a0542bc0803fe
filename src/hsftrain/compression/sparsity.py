"""Unstructured magnitude pruning of a network's convolution weights (no Lightning).

:func:`apply_sparsity` raises the fraction of zero weights of the Conv3d / ConvTranspose3d
layers to a target with ``torch.nn.utils.prune`` masks (L1 magnitude, global or per layer;
masks only grow); :func:`cubic_sparsity` is the schedule of Zhu & Gupta (2017) that
:class:`hsftrain.compression.pruning.GradualMagnitudePruning` follows;
:func:`make_permanent` turns the masks into plain zeroed weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import prune

#: The layer types whose weights are pruned, by ``compression.pruning.layers`` name.
PRUNABLE: dict[str, type[_ConvNd]] = {"Conv3d": nn.Conv3d, "ConvTranspose3d": nn.ConvTranspose3d}


def cubic_sparsity(
    epoch: float,
    start_epoch: float,
    end_epoch: float,
    init_sparsity: float,
    final_sparsity: float,
    update_frequency: float,
) -> float:
    """Scheduled sparsity at ``epoch`` (Zhu & Gupta's cubic schedule, stepwise).

    0 before ``start_epoch``; ``init_sparsity`` from ``start_epoch``; then at each update
    ``t = t0 + k * dt`` the value ``s_f + (s_i - s_f) (1 - (t - t0) / (t_end - t0))^3``,
    held until the next update; ``final_sparsity`` from ``end_epoch`` on.
    """
    if epoch < start_epoch:
        return 0.0
    if epoch >= end_epoch or end_epoch <= start_epoch:
        return float(final_sparsity)
    dt = float(update_frequency) if update_frequency and update_frequency > 0 else 1.0
    steps = math.floor((epoch - start_epoch) / dt + 1e-9)
    t = min(start_epoch + steps * dt, end_epoch)
    progress = (t - start_epoch) / (end_epoch - start_epoch)
    return float(final_sparsity + (init_sparsity - final_sparsity) * (1.0 - progress) ** 3)


def prunable_modules(net: nn.Module, layers: Iterable[str] = PRUNABLE) -> list[tuple[str, _ConvNd]]:
    """Named modules whose ``weight`` is pruned (Conv3d and ConvTranspose3d by default)."""
    types = tuple(PRUNABLE[t] for t in layers)
    return [
        (n, m) for n, m in net.named_modules() if isinstance(m, _ConvNd) and isinstance(m, types)
    ]


def _mask_zeros(module: _ConvNd) -> int:
    mask = getattr(module, "weight_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


def _l1_masks(modules: list[_ConvNd], count: int) -> list[torch.Tensor]:
    """Masks zeroing the ``count`` smallest-magnitude weights of ``modules`` together,
    weights already masked first (so masks only grow).

    Works on any memory format (``torch.nn.utils.prune``'s own L1 methods ``view`` the
    weights, which fails on the channels-last weights that training uses).
    """
    scores = []
    for module in modules:
        weight = module.weight.detach().abs().reshape(-1).float()
        mask = getattr(module, "weight_mask", None)
        if mask is not None:
            weight = torch.where(mask.reshape(-1) == 0, torch.full_like(weight, -1.0), weight)
        scores.append(weight)
    flat = torch.cat(scores)
    keep = torch.ones_like(flat)
    if count > 0:
        keep[torch.topk(flat, min(count, flat.numel()), largest=False).indices] = 0
    masks, start = [], 0
    for module in modules:
        n = module.weight.numel()
        mask = torch.empty_like(module.weight, dtype=module.weight.dtype)
        mask.copy_(keep[start : start + n].reshape(module.weight.shape))
        masks.append(mask.detach())
        start += n
    return masks


def apply_sparsity(
    net: nn.Module, sparsity: float, scope: str = "global", layers: Iterable[str] = PRUNABLE
) -> float:
    """Raise the pruned fraction of the prunable weights to ``sparsity`` (L1 magnitude).

    ``global``: one magnitude threshold over all layers; ``layer``: each layer pruned to
    ``sparsity``. Masks only grow: weights already pruned stay pruned. The masks are
    applied with ``torch.nn.utils.prune.custom_from_mask`` (forward pre-hook,
    ``weight_orig`` / ``weight_mask``). Returns the fraction of the prunable weights now
    zero.

    Raises:
        ValueError: unknown ``scope``.
    """
    modules = [m for _, m in prunable_modules(net, layers)]
    if not modules:
        return 0.0
    if scope == "global":
        groups = [modules]
    elif scope == "layer":
        groups = [[m] for m in modules]
    else:
        raise ValueError(f"compression.pruning.scope={scope!r}: use 'global' or 'layer'")
    for group in groups:
        total = sum(m.weight.numel() for m in group)
        target = int(round(sparsity * total))
        if target <= sum(_mask_zeros(m) for m in group):
            continue
        with torch.no_grad():
            for module, mask in zip(group, _l1_masks(group, target), strict=True):
                prune.custom_from_mask(module, "weight", mask)
    return weight_sparsity(net, layers)


def weight_sparsity(net: nn.Module, layers: Iterable[str] = PRUNABLE) -> float:
    """Fraction of exactly-zero weights in the prunable layers (masks applied)."""
    modules = prunable_modules(net, layers)
    total = sum(m.weight.numel() for _, m in modules)
    zeros = sum(int(torch.count_nonzero(m.weight == 0)) for _, m in modules)
    return zeros / total if total else 0.0


def make_permanent(net: nn.Module) -> int:
    """``prune.remove`` every mask: plain (zeroed) weights. Returns how many were removed."""
    count = 0
    for module in net.modules():
        hooks = [
            h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)
        ]
        for hook in hooks:
            prune.remove(module, hook._tensor_name)
            count += 1
    return count

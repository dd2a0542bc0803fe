"""Finding NaN and Inf in tensors and state dicts (torch only, no Lightning)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from hsftrain.core.errors import NonFiniteError


def nonfinite_tensors(tensors: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an Inf (one device sync)."""
    pairs = tensors.items() if isinstance(tensors, Mapping) else tensors
    items = [
        (name, t)
        for name, t in pairs
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()
    ]
    if not items:
        return []
    flags = torch.stack([torch.isfinite(t.detach()).all() for _, t in items]).cpu()
    return [name for (name, _), ok in zip(items, flags.tolist(), strict=True) if not ok]


def check_finite_state(state: Mapping[str, Any], source: str | Path) -> None:
    """Refuse a state dict with NaN or Inf weights.

    Raises:
        NonFiniteError: names the file and the first bad tensors.
    """
    bad = nonfinite_tensors(state)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteError(
            f"{source}: the model holds NaN/Inf weights ({shown}) and cannot be used; take "
            "an earlier checkpoint of its run (checkpoints/best-*.ckpt) or retrain it with a "
            "lower models.lr"
        )

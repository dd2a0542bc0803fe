"""Fine-tuning: freeze everything but the head, then unfreeze level by level.

The unfreezing *path* of ``mode`` lists the network's levels in the order they are thawed:

* ``decoder``: from the output backwards: decoder levels shallow -> deep, then encoder
  levels deep -> shallow. Good when the label scheme changes (new head, same images).
* ``encoder``: from the input forwards: encoder levels shallow -> deep, then decoder levels
  deep -> shallow. Good when the images change (new contrast or scanner, same labels).

At epoch ``e`` the head plus the first ``min(e // unfreeze_frequency, depth)`` levels of the
path are trainable (``depth = -1``: the whole path). Train for
``(depth + 1) * unfreeze_frequency`` epochs to give every stage the same time.
``unfreeze_frequency = 0`` makes the whole path (up to ``depth``) trainable at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import lightning as L
from torch import nn

from hsftrain.models import HSFResidualUNet3D, Network, UNet3D

log = logging.getLogger(__name__)

MODES = ("encoder", "decoder")


def unfreeze_path(net: Network, mode: str) -> list[tuple[str, nn.Module]]:
    """Named levels of ``net`` in the order ``mode`` unfreezes them.

    Raises:
        ValueError: unknown mode.
    """
    encoders = [(f"encoders.{i}", m) for i, m in enumerate(net.encoders)]
    n_dec = len(net.decoders)
    # decoders[0] is the deepest; decoders[-1] the one next to the head.
    decoders_up = [(f"decoders.{i}", net.decoders[i]) for i in range(n_dec - 1, -1, -1)]
    if mode == "decoder":
        return decoders_up + encoders[::-1]
    if mode == "encoder":
        return encoders + decoders_up[::-1]
    raise ValueError(f"finetuning.mode={mode!r}: use 'encoder' or 'decoder'")


def trainable_levels(epoch: int, frequency: int, depth: int, path_length: int) -> int:
    """How many levels of the path are trainable at ``epoch``."""
    limit = path_length if depth < 0 else min(depth, path_length)
    if frequency <= 0:
        return limit
    return min(epoch // frequency, limit)


def apply_freeze(net: Network, mode: str, n_levels: int) -> list[str]:
    """Freeze all but the head (with deep supervision's auxiliary heads) and the first
    ``n_levels`` levels of the path.

    Returns the names of the trainable parts.
    """
    path = unfreeze_path(net, mode)
    for p in net.parameters():
        p.requires_grad_(False)
    for head in (net.head, *getattr(net, "aux_heads", [])):  # deep supervision's train too
        for p in head.parameters():
            p.requires_grad_(True)
    names = ["head"]
    for name, module in path[:n_levels]:
        for p in module.parameters():
            p.requires_grad_(True)
        names.append(name)
    return names


def thawing_step_s(
    module: Any,
    finetuning: Any,
    all_trainable_s: float,
    deadline: float,
    time_step: Callable[[Any], float],
) -> Callable[[int], float]:
    """Seconds per training step by epoch under the ``finetuning`` schedule, for
    ``budget=``: a step with frozen levels is faster (no gradients for them).

    Args:
        module: a throwaway LightningModule of the run's network (its weights get trained).
        all_trainable_s: the step time with every level trainable (already measured).
        deadline: ``time.monotonic()`` after which no further stage is timed; a stage not
            timed counts as ``all_trainable_s`` (the plan then ends early, never late).
        time_step: seconds per step of ``module`` as it is frozen.
    """
    mode, depth, frequency = (
        str(finetuning.mode),
        int(finetuning.depth),
        int(finetuning.unfreeze_frequency),
    )
    length = len(unfreeze_path(module.net, mode))
    limit = length if depth < 0 else min(depth, length)
    stages = [limit] if frequency <= 0 else list(range(limit + 1))
    seconds: dict[int, float] = {}
    for n in stages:
        if n == length:  # every level trainable: measured already
            seconds[n] = all_trainable_s
        elif time.monotonic() < deadline:
            apply_freeze(module.net, mode, n)
            seconds[n] = time_step(module)
    timed = ", ".join(f"{n}: {t:.2f}" for n, t in seconds.items())
    log.info(
        "budget: s/step by number of thawed levels (finetuning.mode=%s): %s; otherwise %.2f",
        mode, timed or "none timed", all_trainable_s,
    )  # fmt: skip

    def step_s(epoch: int) -> float:
        return seconds.get(trainable_levels(epoch, frequency, depth, length), all_trainable_s)

    return step_s


class GradualUnfreezing(L.Callback):
    """Applies the schedule at the start of every training epoch and logs it.

    Frozen levels are kept in eval mode so that their normalisation statistics do not move.
    """

    def __init__(self, mode: str, depth: int, unfreeze_frequency: int) -> None:
        if mode not in MODES:
            raise ValueError(f"finetuning.mode={mode!r}: use 'encoder' or 'decoder'")
        self.mode, self.depth, self.frequency = mode, int(depth), int(unfreeze_frequency)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        if not isinstance(net, UNet3D | HSFResidualUNet3D):
            raise TypeError(f"{type(net).__name__}: gradual unfreezing needs an hsftrain U-Net")
        path = unfreeze_path(net, self.mode)
        n = trainable_levels(trainer.current_epoch, self.frequency, self.depth, len(path))
        names = apply_freeze(net, self.mode, n)
        for _, module in path[n:]:
            module.eval()
        log.info("epoch %d: trainable = %s", trainer.current_epoch + 1, ", ".join(names))
        pl_module.log("finetune/trainable_levels", float(n), on_epoch=True, on_step=False)

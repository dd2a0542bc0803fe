"""Timed training steps outside Lightning: what ``budget=`` measures each candidate network
with, and what ``benchmarks/train_throughput.py`` measures throughput with (one step
function for both, the same as training takes). The caller flushes denormal floats first,
as training does (``training.denormals``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hsftrain.data.augment import BatchAugment
from hsftrain.data.cache import PreparedSubject
from hsftrain.data.datamodule import input_multiple
from hsftrain.data.dataset import PatchDataset, VolumeDataset


def train_step(
    module: Any,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    augment: BatchAugment | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """One optimiser step outside Lightning, as training takes it: augmentation (when
    given), forward in bf16 autocast (when asked), forgiving loss, backward, step.

    Args:
        batch: ``image (B, 1, X, Y, Z)``, ``label (B, X, Y, Z)``, ``dataset (B,)`` and
            ``spacing (B, 3)``, on the module's device.

    Returns:
        The loss (not synchronised to the host).
    """
    image, label = batch["image"], batch["label"]
    if augment is not None:
        image, label = augment(image, label, batch["spacing"])
    device_type = image.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss: torch.Tensor
        loss, _ = module._step({"image": image, "label": label, "dataset": batch["dataset"]})
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


@dataclass(frozen=True)
class StepShape:
    """What one timed training step is made of, as the run will train.

    Attributes:
        patch: the patch size.
        batch_size: patches per step.
        num_levels: the network's levels (volumes are padded to its input multiple).
        augmentation: the ``augmentation`` group (None: none).
        bf16: bf16 autocast.
    """

    patch: Sequence[int]
    batch_size: int
    num_levels: int
    augmentation: Any = None
    bf16: bool = False


def time_steps(
    module: Any,
    train: Sequence[PreparedSubject],
    val: Sequence[PreparedSubject],
    shape: StepShape,
    device: torch.device,
    steps: int,
) -> tuple[float, float]:
    """Seconds per training step (data, augmentation, forward, backward, optimiser) and
    seconds for one validation pass over ``val``, in bf16 autocast when ``shape.bf16`` (as
    the run will train)."""
    patch, batch_size, num_levels = shape.patch, shape.batch_size, shape.num_levels
    augmentation, bf16 = shape.augmentation, shape.bf16
    module = module.to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    augment = BatchAugment(augmentation or {}, seed=0)
    dataset = PatchDataset(train, patch, 0.33)
    cuda = device.type == "cuda"

    def step(i: int) -> None:
        items = [dataset[(i * batch_size + j) % len(dataset)] for j in range(batch_size)]
        batch = torch.utils.data.default_collate(items)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        train_step(module, optimizer, batch, augment if augment.enabled else None, bf16)

    module.train()
    for i in range(2):  # warm-up: allocations, kernels, optimiser state
        step(-1 - i)
    if cuda:  # one synchronised span: per-step synchronisation would slow the GPU down
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        torch.cuda.synchronize()
        per_step = (time.perf_counter() - start) / steps
    else:  # the median step: one slow step (a rare costly augmentation, the OS) is not
        # the typical one (the mean of 6 steps overestimated a 30-minute run by 9%)
        times = []
        for i in range(steps):
            start = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - start)
        per_step = float(np.median(times))
    # validation: forward passes over a few whole volumes, scaled to the validation set
    module.eval()
    volumes = VolumeDataset(val[: min(len(val), 4)], input_multiple(num_levels))
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(len(volumes)):
            module(volumes[i]["image"][None].to(device))
    if cuda:
        torch.cuda.synchronize()
    per_volume = (time.perf_counter() - start) / max(len(volumes), 1)
    return per_step, per_volume * len(val)

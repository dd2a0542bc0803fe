"""Learning-rate schedule: linear warm-up then cosine annealing, stepped every batch."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0
) -> float:
    """LR multiplier at ``step``: ``(step+1)/warmup`` during warm-up, then cosine to
    ``min_factor`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosine:
    """:func:`warmup_cosine_factor` as a callable object: ``LambdaLR`` saves its attributes
    in the scheduler's state, so ``total_steps`` may be changed during a run (``budget=``
    stretches or shortens the run to its measured pace, :meth:`refit`) and survives a
    resume."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_factor = min_factor
        #: from this step on, the cosine goes on from ``from_progress`` (see :meth:`refit`)
        self.from_step = 0
        self.from_progress = 0.0

    def _progress(self, step: int) -> float:
        if self.from_step > self.warmup_steps:
            start, done = self.from_step, self.from_progress
        else:
            start, done = self.warmup_steps, 0.0
        span = max(self.total_steps - start, 1)
        return min(max(done + (1 - done) * (step - start) / span, 0.0), 1.0)

    def refit(self, step: int, total_steps: int) -> None:
        """End the schedule at ``total_steps`` instead, going on from the learning rate of
        ``step`` (the current step): it keeps decreasing, never jumps back up."""
        if step > self.warmup_steps:
            self.from_progress = self._progress(step)
            self.from_step = step
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = self._progress(step)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`warmup_cosine_factor` (through :class:`WarmupCosine`)."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_factor))

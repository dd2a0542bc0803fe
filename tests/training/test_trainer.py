"""Lightning's start-up lines that say nothing to a user are not logged."""

from __future__ import annotations

import logging

import pytest

import hsftrain.training.trainer  # noqa: F401  (installs the filter)


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("GPU available: False, used: False", False),
        ("TPU available: False, using: 0 TPU cores", False),
        ("HPU available: False, using: 0 HPUs", False),
        ("Loading `train_dataloader` to estimate number of stepping batches.", False),
        ("GPU available: True (cuda), used: False", True),
        ("Using bfloat16 Automatic Mixed Precision (AMP)", True),
    ],
)
def test_lightning_start_up_noise_is_dropped(message: str, shown: bool) -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, message, None, None)
    assert bool(logger.filter(record)) == shown

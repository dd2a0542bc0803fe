"""A label map lacking some of its dataset's classes (a crop without the tail) is forgiven
per subject: its own loss table sends those classes to background."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hsftrain.data.labels import group_table, without_classes
from hsftrain.losses import ForgivingLoss
from hsftrain.losses.tables import dataset_tables

NAMES = ["background", "DG", "TAIL"]
TAIL = 2


def test_without_classes_sends_the_lacking_class_to_background() -> None:
    table = group_table(NAMES, NAMES)
    assert without_classes(table, [TAIL]).tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert table.tolist() == np.eye(3).tolist()  # the dataset's table is left as it is


def test_a_lacking_class_merged_at_a_coarser_granularity() -> None:
    model = ["background", "DG", "CA1", "CA2", "CA3"]
    coarse = ["background", "DG", "CA1", "CA2/3"]
    table = without_classes(group_table(model, coarse, "1/23"), [3])
    assert table[0].tolist() == [1, 0, 0, 1, 1] and not table[3].any()


def _tables(forgiving: bool = True) -> dict[int, torch.Tensor]:
    tables = dataset_tables(NAMES, {0: NAMES}, {0: "1/2/3"}, forgiving, {1: (0, (TAIL,))})
    return {d: torch.from_numpy(t) for d, t in tables.items()}


def _probs(tail_in_background: bool) -> torch.Tensor:
    """(1, 3, 4, 4, 4) probabilities of a map whose first half is DG, the rest background;
    in the background half, the model puts a quarter of its probability on TAIL (or keeps
    it all on background)."""
    probs = torch.zeros(1, 3, 4, 4, 4)
    probs[0, 1, :2] = 1.0
    probs[0, 0, 2:] = 1.0
    if tail_in_background:
        probs[0, 0, 2:] = 0.75
        probs[0, TAIL, 2:] = 0.25
    return probs


def _label() -> torch.Tensor:
    label = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    label[0, :2] = 1
    return label


def test_tail_predicted_where_a_map_lacking_tail_says_background_is_forgiven() -> None:
    loss = ForgivingLoss(_tables())
    lacking = torch.tensor([1])  # the table of the maps lacking TAIL
    kept, moved = (loss(_probs(m), _label(), lacking) for m in (False, True))
    assert float(moved) == pytest.approx(float(kept), abs=1e-6)
    # a map that has TAIL (its dataset's table) is penalised for the same prediction
    having = torch.tensor([0])
    assert (
        float(loss(_probs(True), _label(), having))
        > float(loss(_probs(False), _label(), having)) + 0.05
    )


def test_a_batch_mixing_both_tables_and_the_gradient_stays_finite() -> None:
    loss = ForgivingLoss(_tables())
    assert loss.valid.tolist() == [[True, True, True], [True, True, False]]
    # softmax-like (nowhere exactly 0 or 1); the empty TAIL row of the lacking table
    # would be a class with a perfect score there, whose focal gradient is infinite
    probs = (0.9 * torch.cat([_probs(True), _probs(True)]) + 0.1 / 3).requires_grad_()
    value = loss(probs, torch.cat([_label(), _label()]), torch.tensor([0, 1]))
    value.backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all()
    both = float(value.detach())
    one = [float(loss(probs[:1].detach(), _label(), torch.tensor([d]))) for d in (0, 1)]
    assert both == pytest.approx(sum(one) / 2, abs=1e-6)


def test_without_the_forgiving_loss_the_lacking_class_is_trained_as_background() -> None:
    tables = _tables(forgiving=False)
    assert torch.equal(tables[1], tables[0])
    loss = ForgivingLoss(tables)
    lacking = torch.tensor([1])
    assert float(loss(_probs(True), _label(), lacking)) > float(
        loss(_probs(False), _label(), lacking)
    )

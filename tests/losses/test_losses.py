import pytest
import torch

from hsftrain.losses import FocalTverskyLoss, ForgivingLoss, TverskyLoss, one_hot, tversky_index


def _example():
    # 4 voxels, 2 classes; class 1 probs [1, .5, 0, 0], target [1, 1, 0, 0]
    p1 = torch.tensor([1.0, 0.5, 0.0, 0.0])
    probs = torch.stack([1 - p1, p1]).reshape(1, 2, 4, 1, 1)
    target = one_hot(torch.tensor([1, 1, 0, 0]).reshape(1, 4, 1, 1), 2)
    return probs, target


def test_tversky_index_by_hand():
    probs, target = _example()
    ti = tversky_index(probs, target, alpha=0.3, beta=0.7, smooth=0)
    # class 1: TP 1.5, FP 0, FN 0.5 -> 1.5 / (1.5 + 0.7 * 0.5)
    # class 0: TP 2, FP 0.5, FN 0 -> 2 / (2 + 0.3 * 0.5)
    assert ti.tolist() == pytest.approx([2 / 2.15, 1.5 / 1.85])


def test_tversky_and_focal_loss_by_hand():
    probs, target = _example()
    plain = TverskyLoss(smooth=0)(probs, target)
    assert float(plain) == pytest.approx(((1 - 2 / 2.15) + (1 - 1.5 / 1.85)) / 2)
    focal = FocalTverskyLoss(gamma=0.75, smooth=0)(probs, target)
    assert float(focal) == pytest.approx(((1 - 2 / 2.15) ** 0.75 + (1 - 1.5 / 1.85) ** 0.75) / 2)
    assert float(focal) == pytest.approx(0.2113, abs=1e-3)
    no_bg = FocalTverskyLoss(gamma=1.0, smooth=0, include_background=False)(probs, target)
    assert float(no_bg) == pytest.approx(1 - 1.5 / 1.85)


def test_perfect_prediction_has_zero_loss():
    target = one_hot(torch.tensor([0, 1, 2, 1]).reshape(1, 4, 1, 1), 3)
    assert float(FocalTverskyLoss()(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_forgiving_loss_does_not_penalise_finer_prediction():
    # model classes: background, CA2, CA3; dataset "1/23" labels: background, CA2/3
    table = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    probs = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 2, 1, 1)
    label_map = torch.tensor([1, 0]).reshape(1, 2, 1, 1)
    forgiving = ForgivingLoss({0: table}, FocalTverskyLoss(gamma=1.0))
    assert float(forgiving(probs, label_map, torch.tensor([0]))) == pytest.approx(0.0, abs=1e-6)
    strict = ForgivingLoss({0: torch.eye(3)}, FocalTverskyLoss(gamma=1.0))
    assert float(strict(probs, label_map, torch.tensor([0]))) > 0.2


def test_cross_entropy_term_by_hand_and_forgiving():
    # model classes: background, CA2, CA3; dataset "1/23": background, CA2/3
    table = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    probs = torch.tensor([[0.2, 0.4, 0.4], [0.5, 0.25, 0.25]]).T.reshape(1, 3, 2, 1, 1)
    label_map = torch.tensor([1, 0]).reshape(1, 2, 1, 1)
    base = FocalTverskyLoss(gamma=1.0)
    without = float(ForgivingLoss({0: table}, base)(probs, label_map, torch.tensor([0])))
    with_ce = float(ForgivingLoss({0: table}, base, 0.5)(probs, label_map, torch.tensor([0])))
    # grouped: voxel 0 p(CA2/3) = 0.8 (labelled CA2/3), voxel 1 p(background) = 0.5
    ce = -(torch.tensor(0.8).log() + torch.tensor(0.5).log()) / 2
    assert with_ce - without == pytest.approx(0.5 * float(ce), rel=1e-5)
    # a prediction split between CA2 and CA3 where the label is CA2/3 costs nothing
    sure = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 2, 1, 1)
    loss = ForgivingLoss({0: table}, base, 1.0)(sure, label_map, torch.tensor([0]))
    assert float(loss) == pytest.approx(0.0, abs=1e-5)


def test_forgiving_loss_per_dataset_tables():
    probs = torch.softmax(torch.randn(2, 3, 4, 4, 4), 1)
    label_map = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    tables = {0: torch.eye(3), 1: torch.tensor([[1.0, 0, 0], [0, 1.0, 1.0]])}
    loss = ForgivingLoss(tables)(probs, label_map, torch.tensor([0, 1]))
    assert loss.ndim == 0 and 0 < float(loss) < 1


def test_forgiving_loss_mixed_granularities_matches_reference():
    """Three datasets at three granularities in one batch: the value computed item by item
    with the previous (per-item loop) implementation, recorded here."""
    from hsftrain.data.labels import group_table

    names = ["background", "DG", "CA1", "CA2", "CA3", "SUB"]
    tables = {
        0: torch.from_numpy(group_table(names, names, "1/2/3")),
        1: torch.from_numpy(
            group_table(names, ["background", "DG", "CA1", "CA2/3", "SUB"], "1/23")
        ),
        2: torch.from_numpy(group_table(names, ["background", "hippocampus"], "whole")),
    }
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(4, 6, 5, 6, 7, generator=g), 1)
    sizes = [6, 5, 2, 5]
    label = torch.stack([torch.randint(0, sizes[b], (5, 6, 7), generator=g) for b in range(4)])
    dataset = torch.tensor([0, 1, 2, 1])
    with_bg = ForgivingLoss(tables, FocalTverskyLoss(include_background=True))
    without_bg = ForgivingLoss(tables, FocalTverskyLoss(include_background=False))
    assert float(with_bg(probs, label, dataset)) == pytest.approx(0.7980509996414185, rel=1e-5)
    assert float(without_bg(probs, label, dataset)) == pytest.approx(0.737558126449585, rel=1e-5)


def test_per_item_focal_tversky_equals_loss_of_each_item_alone():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(3, 4, 4, 5, 3, generator=g), 1)
    target = one_hot(torch.randint(0, 4, (3, 4, 5, 3), generator=g), 4)
    loss = FocalTverskyLoss()
    per_item = loss.per_item(probs, target, torch.ones(3, 4, dtype=torch.bool))
    alone = torch.stack([loss(probs[b : b + 1], target[b : b + 1]) for b in range(3)])
    assert torch.allclose(per_item, alone, atol=1e-6)


def test_mixed_batch_with_fewer_classes_has_finite_gradients():
    """A batch mixing a 6-class dataset and a 3-class one (padded rows, TI = 1 there):
    the focal exponent must not turn the padding into NaN gradients."""
    from hsftrain.data.labels import group_table

    model = ["background", "BODY", "HEAD", "TAIL", "SUB", "ASHS_9"]
    tables = {
        0: torch.eye(6),
        1: torch.as_tensor(group_table(model, ["background", "anterior", "posterior"], "ap")),
    }
    loss = ForgivingLoss(tables)
    logits = torch.randn(2, 6, 4, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4, 4))
    value = loss(torch.softmax(logits, 1), labels, torch.tensor([0, 1]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    only_small = loss(torch.softmax(logits, 1)[1:], labels[1:], torch.tensor([1]))
    manual = FocalTverskyLoss()(
        loss.grouped(torch.softmax(logits, 1)[1:], torch.tensor([1]))[:, :3],
        one_hot(labels[1:], 3),
    )
    assert only_small.item() == pytest.approx(manual.item(), rel=1e-5)

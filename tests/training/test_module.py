"""SegmentationModule: loss wiring, device-side validation Dice, schedule length."""

from __future__ import annotations

import pytest
import torch

from hsftrain.training.module import SegmentationModule

NAMES = ["background", "DG", "CA1", "CA2", "CA3", "SUB"]
COARSE = ["background", "DG", "CA1", "CA2/3", "SUB"]
OPTIM = {"lr": 1e-3, "use_forgiving_loss": True, "loss": {}, "optimizer": {}, "scheduler": {}}


def _module() -> SegmentationModule:
    return SegmentationModule(
        "ResidualUNet3D",
        {"in_channels": 1, "out_channels": 6, "f_maps": 4, "num_levels": 2},
        NAMES,
        {0: NAMES, 1: COARSE},
        {0: "1/2/3", 1: "1/23"},
        OPTIM,
        total_steps=10,
    )


def _logged(module: SegmentationModule, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    logged: dict[str, float] = {}
    monkeypatch.setattr(module, "log", lambda name, value, **_: logged.__setitem__(name, value))
    module.on_validation_epoch_end()
    return logged


def test_validation_dice_per_dataset_classes_includes_ca2_3(monkeypatch) -> None:
    """CA2/3 (a name with a slash) is a Dice entry and counts in the mean."""
    module = _module()
    ref = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    ref[:, :2] = 1  # DG
    ref[:, 2:, :2] = 3  # CA2 in dataset 0, CA2/3 in dataset 1
    pred = ref.clone()
    pred[1, 3, 0] = 2  # item 1: 4 of its 16 CA2/3 voxels predicted CA1
    module._accumulate_dice(pred, ref, torch.tensor([0, 1]))
    logged = _logged(module, monkeypatch)
    assert logged["val/dice/DG"] == pytest.approx(1.0)
    assert logged["val/dice/CA2"] == pytest.approx(1.0)
    assert logged["val/dice/CA2/3"] == pytest.approx(2 * 12 / (12 + 16))
    # CA1: item 0 has none predicted nor labelled (1.0), item 1 has 4 false positives (0.0)
    assert logged["val/dice/CA1"] == pytest.approx(0.5)
    dice_names = [k for k in logged if k.startswith("val/dice/")]
    assert len(dice_names) == 6  # DG CA1 CA2 CA3 SUB CA2/3: shared names counted once
    expected = sum(logged[k] for k in dice_names) / len(dice_names)
    assert logged["val/dice_mean"] == pytest.approx(expected)
    assert float(module.dice_count.sum()) == 0  # reset for the next epoch


def test_validation_step_uses_the_dataset_table(monkeypatch) -> None:
    module = _module().eval()
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    batch = {
        "image": torch.randn(2, 1, 8, 8, 8),
        "label": torch.randint(0, 5, (2, 8, 8, 8), dtype=torch.uint8),
        "dataset": torch.tensor([1, 1]),
        "spacing": torch.ones(2, 3),
    }
    module.surface_every = -1
    with torch.no_grad():
        module.validation_step(batch, 0)
    assert float(module.dice_count[module.dice_names.index("CA2/3")]) == 2
    assert float(module.dice_count[module.dice_names.index("CA2")]) == 0


def test_loss_reads_uint8_labels_and_is_finite() -> None:
    module = _module()
    batch = {
        "image": torch.randn(2, 1, 8, 8, 8),
        "label": torch.randint(0, 5, (2, 8, 8, 8), dtype=torch.uint8),
        "dataset": torch.tensor([0, 1]),
    }
    loss, probs = module._step(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and probs.shape == (2, 6, 8, 8, 8)
    loss.backward()


def test_schedule_spans_the_given_steps_without_a_trainer() -> None:
    module = _module()
    assert module._stepping_batches() == 10
    opt = module.configure_optimizers()
    assert opt["optimizer"].defaults["total_steps"] == 10

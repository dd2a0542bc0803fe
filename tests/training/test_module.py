"""SegmentationModule: loss wiring, device-side validation Dice, schedule length."""

from __future__ import annotations

import pytest
import torch

from hsftrain.training.module import SegmentationModule

NAMES = ["background", "DG", "CA1", "CA2", "CA3", "SUB"]
COARSE = ["background", "DG", "CA1", "CA2/3", "SUB"]
OPTIM = {"lr": 1e-3, "use_forgiving_loss": True, "loss": {}, "optimizer": {}, "scheduler": {}}


def _module(**optim: float) -> SegmentationModule:
    return SegmentationModule(
        "ResidualUNet3D",
        {"in_channels": 1, "out_channels": 6, "f_maps": 4, "num_levels": 2},
        NAMES,
        {0: NAMES, 1: COARSE},
        {0: "1/2/3", 1: "1/23"},
        {**OPTIM, **optim},
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


def _set_weights(module: SegmentationModule, value: float) -> None:
    with torch.no_grad():
        for t in module._weights().values():
            if t.is_floating_point():
                t.fill_(value)


def _first(module: SegmentationModule) -> float:
    return float(next(iter(module.net.parameters())).detach().flatten()[0])


def test_ema_follows_training_with_a_short_memory_at_first() -> None:
    module = _module(ema_decay=0.9)
    _set_weights(module, 1.0)
    module.on_train_batch_end(None, None, 0)  # first step: the average starts as the weights
    _set_weights(module, 2.0)
    module.on_train_batch_end(None, None, 1)  # decay min(0.9, 2/11)
    first = 1.0 + (1 - 2 / 11) * (2.0 - 1.0)
    _set_weights(module, 0.0)
    module.on_train_batch_end(None, None, 2)  # decay min(0.9, 3/12)
    expected = first * 3 / 12
    assert float(module._ema[0].flatten()[0]) == pytest.approx(expected)
    assert _first(module) == 0.0  # training weights untouched
    module.on_validation_epoch_start()  # validation runs on the average ...
    assert _first(module) == pytest.approx(expected)
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    module.on_validation_epoch_end()  # ... and training goes on from its own weights
    assert _first(module) == 0.0 and float(module._ema[0].flatten()[0]) == pytest.approx(expected)


@pytest.mark.parametrize("during_validation", [False, True])
def test_checkpoint_holds_the_average_and_resumes_the_trained_weights(
    during_validation: bool,
) -> None:
    module = _module(ema_decay=0.5)
    _set_weights(module, 1.0)
    module.on_train_batch_end(None, None, 0)
    _set_weights(module, 3.0)
    module.on_train_batch_end(None, None, 1)  # average 1 + (1 - 2/11) * 2
    average = 1.0 + (1 - 2 / 11) * 2.0
    if during_validation:  # e.g. a signal that saves while validation runs on the average
        module.on_validation_epoch_start()
    checkpoint = {"state_dict": {k: v.clone() for k, v in module.state_dict().items()}}
    module.on_save_checkpoint(checkpoint)
    key = next(k for k in checkpoint["state_dict"] if k.startswith("net.") and "weight" in k)
    assert float(checkpoint["state_dict"][key].flatten()[0]) == pytest.approx(average)
    assert float(checkpoint["ema_raw"][key].flatten()[0]) == pytest.approx(3.0)
    assert checkpoint["ema_updates"] == 2

    resumed = _module(ema_decay=0.5)
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])
    assert _first(resumed) == pytest.approx(3.0)  # the trained weights
    assert float(resumed._ema[0].flatten()[0]) == pytest.approx(average)
    assert resumed._ema_updates == 2


def test_no_ema_by_default() -> None:
    module = _module()
    module.on_train_batch_end(None, None, 0)
    checkpoint: dict = {"state_dict": dict(module.state_dict())}
    module.on_save_checkpoint(checkpoint)
    assert module._ema == [] and "ema_raw" not in checkpoint


def test_deep_supervision_loss_weights_every_output() -> None:
    """In training the loss is the head's plus the auxiliary heads', weights halving per
    level and summing to 1; validation scores the head alone; the auxiliary heads train."""
    module = SegmentationModule(
        "ResidualUNet3D",
        {"out_channels": 6, "f_maps": 4, "num_levels": 4, "deep_supervision": True},
        NAMES, {0: NAMES}, {0: "1/2/3"}, dict(OPTIM), total_steps=10,
    )  # fmt: skip
    assert module.output_weights == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    torch.manual_seed(0)
    batch = {
        "image": torch.randn(2, 1, 16, 16, 16),
        "label": torch.randint(0, 6, (2, 16, 16, 16)),
        "dataset": torch.tensor([0, 0]),
    }
    loss, probs = module._step(batch)
    net = module.net
    outputs = [torch.softmax(o, 1) for o in net.forward_deep(batch["image"])]
    parts = [module.loss(p, batch["label"], batch["dataset"]) for p in outputs]
    expected = sum(w * part for w, part in zip(module.output_weights, parts, strict=True))
    assert torch.allclose(loss, expected) and not torch.allclose(loss, parts[0])
    assert torch.allclose(probs, outputs[0])
    loss.backward()
    assert all(p.grad is not None for p in net.aux_heads.parameters())
    module.eval()
    with torch.no_grad():
        val_loss, _ = module._step(batch)
    assert torch.allclose(
        val_loss,
        module.loss(torch.softmax(net(batch["image"]), 1), batch["label"], batch["dataset"]),
    )

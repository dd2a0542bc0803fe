"""Gradual magnitude pruning: the cubic schedule, the masks, the callback, the config."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hsftrain.compression.pruning import (
    GradualMagnitudePruning,
    StructuredPruning,
    compression_callbacks,
)
from hsftrain.compression.sparsity import (
    apply_sparsity,
    cubic_sparsity,
    make_permanent,
    prunable_modules,
    weight_sparsity,
)
from hsftrain.config.compose import ConfigError, compose
from tests.conftest import tiny_net

# s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 with t0 = 0, n dt = 10, dt = 2,
# s_i = 0.05, s_f = 0.7, worked out by hand:
#   t = 2: 0.7 - 0.65 * 0.8^3 = 0.7 - 0.3328 = 0.3672
#   t = 4: 0.7 - 0.65 * 0.6^3 = 0.7 - 0.1404 = 0.5596
#   t = 6: 0.7 - 0.65 * 0.4^3 = 0.7 - 0.0416 = 0.6584
#   t = 8: 0.7 - 0.65 * 0.2^3 = 0.7 - 0.0052 = 0.6948
SCHEDULE = [
    (0.0, 0.05),
    (1.0, 0.05),  # held until the next update
    (2.0, 0.3672),
    (3.9, 0.3672),
    (4.0, 0.5596),
    (6.0, 0.6584),
    (8.0, 0.6948),
    (10.0, 0.7),
    (12.0, 0.7),
]


@pytest.mark.parametrize(("epoch", "expected"), SCHEDULE)
def test_cubic_schedule_by_hand(epoch: float, expected: float) -> None:
    assert cubic_sparsity(epoch, 0, 10, 0.05, 0.7, 2) == pytest.approx(expected, abs=1e-9)


def test_cubic_schedule_before_start_and_fractional_updates() -> None:
    assert cubic_sparsity(0.5, 1, 6, 0.05, 0.5, 2) == 0.0
    # dt = 0.5 epochs, t0 = 0, n dt = 2: at t = 1, (1 - 0.5)^3 = 0.125 -> 0.5 - 0.45 * 0.125
    assert cubic_sparsity(1.2, 0, 2, 0.05, 0.5, 0.5) == pytest.approx(0.44375)


def _prunable_total(net: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in prunable_modules(net))


@pytest.mark.parametrize(
    ("scope", "channels_last"), [("global", False), ("layer", False), ("global", True)]
)
def test_callback_reaches_scheduled_sparsity(scope: str, channels_last: bool) -> None:
    net = tiny_net()
    if channels_last:  # as the training module keeps it
        net.to(memory_format=torch.channels_last_3d)
    module = SimpleNamespace(net=net)
    callback = GradualMagnitudePruning(0, 10, 0.05, 0.7, 2, scope=scope)
    previous_zeros: torch.Tensor | None = None
    for epoch, expected in SCHEDULE:
        callback.step(module, epoch)  # type: ignore[arg-type]
        assert weight_sparsity(net) == pytest.approx(expected, abs=2 / _prunable_total(net) + 1e-3)
        if scope == "layer":
            for _, m in prunable_modules(net):
                n = m.weight.numel()
                assert float((m.weight == 0).float().mean()) == pytest.approx(expected, abs=1 / n)
        zeros = torch.cat([(m.weight == 0).flatten() for _, m in prunable_modules(net)])
        if previous_zeros is not None:
            assert bool(zeros[previous_zeros].all()), "a pruned weight came back"
        previous_zeros = zeros


def test_global_pruning_removes_smallest_magnitudes() -> None:
    net = tiny_net()
    weights = torch.cat([m.weight.detach().abs().flatten() for _, m in prunable_modules(net)])
    apply_sparsity(net, 0.5, "global")
    kept = torch.cat([m.weight.detach().abs().flatten() for _, m in prunable_modules(net)])
    threshold = weights.sort().values[int(0.5 * len(weights)) - 1]
    assert bool((kept[kept > 0] >= threshold).all())


def test_checkpoint_state_and_permanent_masks() -> None:
    net = tiny_net()
    module = SimpleNamespace(net=net)
    callback = GradualMagnitudePruning(0, 1, 0.5, 0.5, 1)
    callback.step(module, 0.0)  # type: ignore[arg-type]
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    assert any(k.endswith("weight_orig") for k in state)
    checkpoint = {"state_dict": state}
    callback.on_save_checkpoint(None, None, checkpoint)  # type: ignore[arg-type]
    keys = checkpoint["state_dict"].keys()
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    plain = tiny_net()
    plain.load_state_dict({k[4:]: v for k, v in checkpoint["state_dict"].items()})
    assert weight_sparsity(plain) == pytest.approx(0.5, abs=1e-3)
    assert make_permanent(net) == len(prunable_modules(net))
    assert not any(k.endswith(("_orig", "_mask")) for k in net.state_dict())
    assert weight_sparsity(net) == pytest.approx(0.5, abs=1e-3)


def _cfg(*overrides: str) -> object:
    return compose("config", list(overrides))


def test_presets_compose_to_callbacks() -> None:
    assert compression_callbacks(_cfg()) == []
    assert compression_callbacks(_cfg("compression=none")) == []
    (scratch,) = compression_callbacks(_cfg("compression=scratch"))
    assert isinstance(scratch, GradualMagnitudePruning)
    assert (scratch.final_sparsity, scratch.update_frequency) == (0.7, 2.0)
    (fine,) = compression_callbacks(_cfg("compression=finetuning", "lightning.max_epochs=8"))
    assert (fine.start_epoch, fine.end_epoch, fine.final_sparsity) == (1, 6, 0.5)
    (cut,) = compression_callbacks(_cfg("compression=structured"))
    assert isinstance(cut, StructuredPruning) and cut.ratio == 0.5


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["compression=finetuning", "lightning.max_epochs=4"], "end_epoch"),
        (["compression=scratch", "compression.pruning.final_sparsity=1.5"], "final_sparsity"),
        (["compression=scratch", "compression.pruning.scope=row"], "scope"),
        (
            ["compression=structured", "lightning.max_epochs=1", "compression.structured.epoch=1"],
            "epoch",
        ),
        (["compression=structured", "compression.structured.ratio=1.0"], "ratio"),
    ],
)
def test_bad_compression_config_names_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        compression_callbacks(_cfg(*overrides))


def test_tiny_lightning_run_prunes_and_cuts(tmp_path: Path) -> None:
    """A real Trainer: magnitude pruning to 60%, a channel cut at epoch 1, checkpoints
    that reload with load_network (new f_maps) and export to ONNX."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from hsftrain.core.onnx_metadata import read_metadata
    from hsftrain.data.dataset import pad_collate
    from hsftrain.export.api import export_checkpoint
    from hsftrain.training.checkpoint import load_network
    from hsftrain.training.module import SegmentationModule

    torch.manual_seed(0)
    names = ["background", "a", "b"]
    optim = {
        "lr": 1e-3,
        "optimizer": {"weight_decay": 0.0, "demon": False},
        "scheduler": {"warmup_ratio": 0.1},
        "loss": {},
        "use_forgiving_loss": False,
    }
    hparams = {"in_channels": 1, "out_channels": 3, "f_maps": 4, "num_levels": 2}
    module = SegmentationModule(
        "ResidualUNet3D", hparams, names, {0: names}, {0: "1/2/3"}, optim, total_steps=6
    )
    items = [
        {
            "image": torch.randn(1, 8, 8, 8),
            "label": torch.randint(0, 3, (8, 8, 8)),
            "dataset": 0,
            "id": str(i),
            "spacing": torch.ones(3, dtype=torch.float64),
        }
        for i in range(4)
    ]
    loader = DataLoader(items, batch_size=2, collate_fn=pad_collate)
    checkpoint = ModelCheckpoint(
        dirpath=str(tmp_path / "checkpoints"), monitor="val/epoch/loss", save_last=True
    )
    gmp = GradualMagnitudePruning(0, 2, 0.2, 0.6, 0.5)
    cut = StructuredPruning(epoch=1, ratio=0.5, min_channels=2)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[checkpoint, gmp, cut],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, loader, loader)
    assert module.hparams["model_hparams"]["f_maps"] == [2, 4]
    assert weight_sparsity(module.net) == pytest.approx(0.6, abs=0.01)
    assert not any(k.endswith("_orig") for k in module.net.state_dict())
    best = Path(checkpoint.best_model_path)
    assert best.is_file() and "epoch=2" in best.name  # only compressed models rank as best
    net, info = load_network(best)
    assert info.hparams["f_maps"] == [2, 4]
    assert weight_sparsity(net) == pytest.approx(0.6, abs=0.01)
    onnx_path = export_checkpoint(best, tmp_path / "pruned.onnx")
    assert read_metadata(onnx_path)["f_maps"] == [2, 4]


def test_train_with_compression_and_resume(tmp_path: Path, phantoms: Path) -> None:
    """``train`` with ``compression=structured`` (+ magnitude pruning), then ``resume``:
    the resumed run rebuilds the cut network from the checkpoint and is not cut again."""
    from hsftrain.core.onnx_metadata import read_metadata
    from hsftrain.training.checkpoint import load_network
    from hsftrain.workflow import train

    common = [
        "datasets=synth",
        f"datasets.main_path={phantoms}",
        "models.hparams.f_maps=8",
        "models.hparams.num_levels=2",
        "lightning.enable_progress_bar=false",
        "logger=csv",
        "augmentation.elastic.p=0",
        "augmentation.motion.p=0",
        f"datasets.output_path={tmp_path}",
        "compression=structured",
        "compression.structured.epoch=1",
        "compression.pruning={start_epoch: 0, end_epoch: 1, final_sparsity: 0.3}",
    ]
    first = train(compose("config", [*common, "lightning.max_epochs=2", "run_name=c"]))
    run_dir = Path(str(first["run_dir"]))
    assert read_metadata(run_dir / "model.onnx")["f_maps"] == [4, 8]
    train(compose("config", [*common, "lightning.max_epochs=3", f"resume={run_dir}"]))
    net, info = load_network(run_dir / "checkpoints" / "last.ckpt")
    assert info.hparams["f_maps"] == [4, 8]  # cut once, not twice
    assert weight_sparsity(net) == pytest.approx(0.3, abs=0.01)

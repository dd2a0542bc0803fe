"""Structured (channel) pruning: shared channel sets per level, exact equivalence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hsftrain.compression.structured import (
    _hparams_of,
    _indices,
    channel_slots,
    count_parameters,
    plan_channels,
    prune_channels,
    structured_prune,
)
from hsftrain.models import build_model
from hsftrain.models.norms import SwitchNorm3d
from tests.conftest import TINY_HPARAMS, tiny_net


def _zero_removed_channels(net: nn.Module, ratio: float) -> None:
    """Make every channel that the plan removes exactly zero everywhere it is produced,
    and take the layer statistics out of SwitchNorm (they mix channels)."""
    plan = plan_channels(net, ratio)
    modules = dict(net.named_modules())
    with torch.no_grad():
        for name, (_, out_slot) in channel_slots(net).items():
            module = modules[name]
            if out_slot[0] not in ("level", "inter"):
                continue
            if isinstance(module, nn.ConvTranspose3d):
                full = module.weight.shape[1]
            elif isinstance(module, nn.Conv3d):
                full = module.weight.shape[0]
            else:
                full = module.weight.numel()
            kept = set(_indices(out_slot, plan, full).tolist())
            removed = [c for c in range(full) if c not in kept]
            if isinstance(module, nn.ConvTranspose3d):
                module.weight[:, removed] = 0
            elif isinstance(module, nn.Conv3d):
                module.weight[removed] = 0
            else:
                module.weight.view(-1)[removed] = 0
                module.bias.view(-1)[removed] = 0
            if isinstance(module, nn.Conv3d | nn.ConvTranspose3d) and module.bias is not None:
                module.bias[removed] = 0
            if isinstance(module, SwitchNorm3d):
                module.mean_weight.copy_(torch.tensor([0.0, -1e4, 0.0]))
                module.var_weight.copy_(torch.tensor([0.0, -1e4, 0.0]))
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize(
    "hparams",
    [
        {"f_maps": 8, "num_levels": 3},
        {"name": "UNet3D", "f_maps": 8, "num_levels": 3, "skip": "concat"},
        {"f_maps": [6, 8, 12], "num_levels": 3, "layer_order": "cgb", "use_attention": False},
    ],
    ids=["arunet-sum", "unet-concat", "batchnorm-list"],
)
def test_smaller_network_matches_when_removed_channels_are_zero(hparams: dict) -> None:
    net = tiny_net(seed=1, **hparams)
    _zero_removed_channels(net, 0.5)
    x = torch.randn(2, 1, 17, 21, 19, generator=torch.Generator().manual_seed(0))
    params = {**TINY_HPARAMS, **hparams}
    params.pop("name", None)
    small, new_hparams, plan = structured_prune(net, 0.5, params)
    sizes = [8, 16, 32] if isinstance(hparams["f_maps"], int) else hparams["f_maps"]
    assert new_hparams["f_maps"] == [s // 2 for s in sizes] == plan.f_maps
    assert count_parameters(small) < 0.35 * count_parameters(net)
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), atol=1e-5, rtol=1e-4)
    # The new hparams rebuild the same architecture (what load_network does).
    name = hparams.get("name", "ResidualUNet3D")
    rebuilt = build_model(name, new_hparams)
    rebuilt.load_state_dict(small.state_dict())


def test_one_channel_set_per_level_by_l1_norm() -> None:
    net = tiny_net(seed=0, f_maps=8, num_levels=2)
    with torch.no_grad():  # make channels 1, 3, 5, 7 of level 0 clearly the strongest
        for name, (_, out_slot) in channel_slots(net).items():
            module = dict(net.named_modules())[name]
            if out_slot == ("level", 0) and isinstance(module, nn.Conv3d):
                module.weight[[1, 3, 5, 7]] *= 100
            if out_slot == ("level", 0) and isinstance(module, nn.ConvTranspose3d):
                module.weight[:, [1, 3, 5, 7]] *= 100
    plan = plan_channels(net, 0.5)
    assert plan.levels[0].tolist() == [1, 3, 5, 7]
    small, _ = prune_channels(net, plan)
    # encoder output, decoder upsampling and decoder block share the level-0 channels
    up = net.decoders[0].up.weight[plan.levels[1]][:, [1, 3, 5, 7]]
    torch.testing.assert_close(small.decoders[0].up.weight, up)
    torch.testing.assert_close(small.decoders[0].block.conv3[0].weight.shape[0], 4)
    torch.testing.assert_close(small.head.weight, net.head.weight[:, [1, 3, 5, 7]])
    sn_old, sn_new = net.encoders[0].conv1[2], small.encoders[0].conv1[2]
    assert isinstance(sn_new, SwitchNorm3d)
    torch.testing.assert_close(sn_new.running_var, sn_old.running_var[:, [1, 3, 5, 7]])
    torch.testing.assert_close(sn_new.mean_weight, sn_old.mean_weight)


def test_keeps_train_state_and_frozen_parameters() -> None:
    net = tiny_net(f_maps=8, num_levels=2).train()
    for p in net.encoders.parameters():
        p.requires_grad_(False)
    net.encoders.eval()
    small, _, _ = structured_prune(net, 0.25)
    assert small.training and not small.encoders[0].training
    assert not any(p.requires_grad for p in small.encoders.parameters())
    assert all(p.requires_grad for p in small.decoders.parameters())


def test_bad_ratio() -> None:
    with pytest.raises(ValueError, match="ratio"):
        plan_channels(tiny_net(), 1.0)
    with pytest.raises(ValueError, match="ratio"):
        plan_channels(tiny_net(), [0.5, 0.5, 0.5])


def test_keeps_channels_last_memory_format() -> None:
    net = tiny_net(f_maps=8, num_levels=2).to(memory_format=torch.channels_last_3d)
    small, _, _ = structured_prune(net, 0.5)
    weight = small.encoders[0].conv1[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 1, 8, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        assert small(x).shape == (1, 3, 8, 8, 8)


@pytest.mark.parametrize("order", ["cgs", "crb", "cli", "sce"])
def test_architecture_is_read_back_from_the_modules(order: str) -> None:
    net = tiny_net(layer_order=order)
    hparams = _hparams_of(net)
    assert hparams["layer_order"] == order
    assert hparams["out_channels"] == TINY_HPARAMS["out_channels"]


def test_hsf_train_network_is_refused_with_a_config_error() -> None:
    """hsf_train's ARUnet has no layout structured pruning knows: one clear ConfigError,
    at the callback's setup (before any epoch) as well as in the functions."""
    from types import SimpleNamespace

    from hsftrain.compression.pruning import StructuredPruning
    from hsftrain.config.compose import ConfigError

    net = build_model("HSFResidualUNet3D", {"f_maps": 4, "num_levels": 2, "out_channels": 3})
    with pytest.raises(ConfigError, match="compression.structured cannot cut HSFResidualUNet3D"):
        structured_prune(net, 0.5)
    with pytest.raises(ConfigError, match="compression.pruning"):
        StructuredPruning().setup(None, SimpleNamespace(net=net), "fit")  # type: ignore[arg-type]

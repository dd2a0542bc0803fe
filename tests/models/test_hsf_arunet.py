"""HSFResidualUNet3D: hsf_train's ARUnet, key for key and output for output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hsftrain.models import MODELS, HSFResidualUNet3D, build_model
from hsftrain.models.hsf_arunet import (
    HSFUpsampling,
    is_hsf_train_state,
    shape_hparams,
    strip_prefix,
)
from hsftrain.models.norms import SwitchNorm3d
from hsftrain.training.finetuning import apply_freeze, unfreeze_path

REFERENCE = Path(__file__).resolve().parents[3] / "shared/data/hsf_train_reference"
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "arunet_f8_random.ckpt").is_file(), reason="no ../shared hsf_train reference"
)


@needs_reference
def test_reproduces_hsf_train_reference_output() -> None:
    """The f_maps-8 reference checkpoint loads strictly and gives hsf_train's softmax."""
    ckpt = torch.load(REFERENCE / "arunet_f8_random.ckpt", map_location="cpu", weights_only=True)
    assert is_hsf_train_state(ckpt["state_dict"])
    state = strip_prefix(ckpt["state_dict"])
    hparams = shape_hparams(state)
    assert hparams == {
        "in_channels": 1,
        "out_channels": 6,
        "f_maps": 8,
        "num_levels": 4,
        "use_attention": True,
    }
    net = build_model("HSFResidualUNet3D", hparams).eval()
    net.load_state_dict(state)  # strict: no missing or unexpected key
    io = np.load(REFERENCE / "arunet_f8_random_io.npz")
    x = torch.from_numpy(io["input"])
    with torch.no_grad():
        probs = torch.softmax(net(x), dim=1).numpy()
        channels_last = torch.softmax(
            net.to(memory_format=torch.channels_last_3d)(
                x.contiguous(memory_format=torch.channels_last_3d)
            ),
            dim=1,
        ).numpy()
    assert probs.shape == io["output"].shape == (1, 6, 32, 48, 32)
    np.testing.assert_allclose(probs, io["output"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(channels_last, io["output"], atol=1e-4, rtol=0)


@needs_reference
def test_published_4_0_0_layout_loads_key_for_key() -> None:
    """Every key and shape of HSF 4.0.0 (f_maps 64): no missing or unexpected key."""
    layout = json.loads((REFERENCE / "arunet_4.0.0_state_dict_layout.json").read_text())
    assert len(layout) == 191
    # uninitialised tensors of the right shapes (150 MB, allocated once), meta-device model
    state = strip_prefix({key: torch.empty(shape) for key, shape in layout.items()})
    hparams = shape_hparams(state)
    assert hparams == {
        "in_channels": 1,
        "out_channels": 6,
        "f_maps": 64,
        "num_levels": 4,
        "use_attention": True,
    }
    with torch.device("meta"):
        net = HSFResidualUNet3D(**hparams)
    result = net.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in net.parameters()) == 37_483_047
    assert not list(net.buffers())  # no running statistics, as in hsf_train
    bad = dict(state, **{"final_conv.weight": torch.empty(8, 64, 1, 1, 1)})
    with torch.device("meta"):
        net = HSFResidualUNet3D(**hparams)
    with pytest.raises(RuntimeError, match="final_conv.weight"):
        net.load_state_dict(bad, assign=True)


def test_tensor_count_and_names_at_f_maps_8() -> None:
    """hsf_train's own layout: 191 tensors / 587,643 values at f_maps 8, 4 levels, 6 classes."""
    net = HSFResidualUNet3D(f_maps=8, num_levels=4, out_channels=6)
    state = net.state_dict()
    assert len(state) == 191 and sum(v.numel() for v in state.values()) == 587_643
    assert "encoders.1.pooling.weight" in state and "encoders.1.pooling.bias" not in state
    assert "decoders.0.attention.psi.1.mean_weight" in state
    assert state["decoders.0.upsampling.upsample.weight"].shape == (64, 32, 3, 3, 3)


def test_upsampling_slice_equals_output_size() -> None:
    """Cutting the output_padding=1 result equals hsf_train's output_size call, odd or even."""
    torch.manual_seed(0)
    up = HSFUpsampling(3, 2)
    x = torch.randn(1, 3, 3, 4, 5)
    for skip_size in [(5, 7, 9), (6, 8, 10), (5, 8, 9)]:
        skip = torch.zeros(1, 2, *skip_size)
        expected = up.upsample(x, output_size=skip_size)
        got = up(x, skip)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_any_size_channels_last_head_and_freezing() -> None:
    torch.manual_seed(0)
    net = HSFResidualUNet3D(f_maps=4, num_levels=3, out_channels=6)
    x = torch.randn(2, 1, 19, 27, 33)
    with torch.no_grad():
        logits = net(x)
        last = net.to(memory_format=torch.channels_last_3d)(
            x.contiguous(memory_format=torch.channels_last_3d)
        )
    assert logits.shape == (2, 6, 19, 27, 33)
    torch.testing.assert_close(last, logits, rtol=1e-5, atol=1e-5)
    assert net.head is net.final_conv and net.out_channels == 6
    net.replace_head(8)
    assert net.out_channels == 8 and net.head.out_channels == 8 and net.head.in_channels == 4
    assert [n for n, _ in unfreeze_path(net, "decoder")] == [
        "decoders.1",
        "decoders.0",
        "encoders.2",
        "encoders.1",
        "encoders.0",
    ]
    assert apply_freeze(net, "decoder", 1) == ["head", "decoders.1"]
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert {n for n in trainable if not n.startswith("decoders.1.")} == {
        "final_conv.weight",
        "final_conv.bias",
    }
    assert any(n.startswith("decoders.1.") for n in trainable)


def test_switchnorm_without_batch_statistics() -> None:
    norm = SwitchNorm3d(3, batch_stats=False)
    assert norm.mean_weight.shape == (2,) and not list(norm.buffers())
    x = torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(norm.train()(x), norm.eval()(x))
    # equal mixing weights: mean of the instance and layer statistics
    mean_in, var_in = x.mean((2, 3, 4), keepdim=True), x.var((2, 3, 4), keepdim=True)
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = (var_in + mean_in**2).mean(1, keepdim=True) - mean_ln**2
    mean, var = (mean_in + mean_ln) / 2, (var_in + var_ln) / 2
    torch.testing.assert_close(norm(x), (x - mean) / torch.sqrt(var + 1e-5))


def test_registered_and_validated() -> None:
    assert MODELS["HSFResidualUNet3D"] is HSFResidualUNet3D
    with pytest.raises(ValueError, match="layer_order"):
        HSFResidualUNet3D(layer_order="gcs")
    with pytest.raises(ValueError, match="conv_kernel_size=5"):
        HSFResidualUNet3D(conv_kernel_size=5)
    with pytest.raises(ValueError, match="not hsf_train's ResidualUNet3D layout"):
        shape_hparams({"final_conv.weight": torch.zeros(6, 64, 1, 1, 1)})
    # other hsf_train layer orders build with hsf_train's module names
    net = HSFResidualUNet3D(f_maps=4, num_levels=2, layer_order="cbr")
    keys = net.state_dict()
    assert "encoders.0.basic_module.conv1.batchnorm.running_mean" in keys
    assert "encoders.0.basic_module.conv1.conv.bias" not in keys  # no bias before BatchNorm
    assert isinstance(net.encoders[0].basic_module.non_linearity, nn.ReLU)
    with torch.no_grad():
        assert math.isfinite(float(net(torch.randn(2, 1, 8, 8, 8)).sum()))

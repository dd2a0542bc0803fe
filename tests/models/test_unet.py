import pytest
import torch

from hsftrain.models import ResidualUNet3D, UNet3D, build_model
from hsftrain.models.blocks import LAYER_LETTERS, single_conv, validate_order
from hsftrain.models.norms import SwitchNorm3d


@pytest.mark.parametrize("shape", [(1, 1, 16, 16, 16), (2, 1, 17, 23, 9), (1, 1, 5, 31, 12)])
@pytest.mark.parametrize("cls", [ResidualUNet3D, UNet3D])
def test_output_shape_on_odd_sizes(cls, shape):
    net = cls(in_channels=1, out_channels=3, f_maps=4, num_levels=3)
    assert net(torch.randn(*shape)).shape == (shape[0], 3, *shape[2:])


def test_sizes_read_from_config():
    net = build_model("ResidualUNet3D", dict(out_channels=5, f_maps=6, num_levels=3))
    assert [
        e[-1].conv1[0].out_channels
        if isinstance(e, torch.nn.Sequential)
        else e.conv1[0].out_channels
        for e in net.encoders
    ] == [6, 12, 24]
    assert net.head.in_channels == 6 and net.out_channels == 5
    listed = build_model("UNet3D", dict(out_channels=2, f_maps=[3, 5], num_levels=2))
    assert listed.head.in_channels == 3


def test_every_layer_letter_builds():
    for letter in LAYER_LETTERS.replace("c", ""):
        block = single_conv(2, 4, "c" + letter)
        assert block(torch.randn(2, 2, 4, 4, 4)).shape == (2, 4, 4, 4, 4)
    with pytest.raises(ValueError, match="layer_order"):
        validate_order("cx")


def test_replace_head_keeps_body():
    net = ResidualUNet3D(out_channels=8, f_maps=4, num_levels=2)
    before = net.encoders[0].conv1[0].weight.clone()
    net.replace_head(3)
    assert net.out_channels == 3 and net.head.in_channels == 4
    assert torch.equal(net.encoders[0].conv1[0].weight, before)


def test_switchnorm_train_and_eval():
    norm = SwitchNorm3d(3)
    x = torch.randn(4, 3, 5, 5, 5) * 3 + 2
    y = norm(x)
    assert y.shape == x.shape and abs(float(y.mean())) < 0.2
    norm.eval()
    assert torch.isfinite(norm(x)).all()


def test_unknown_model():
    with pytest.raises(ValueError, match="models.name"):
        build_model("VNet", {})


def test_deep_supervision_heads_and_outputs():
    """With deep supervision a 4-level net gets heads on decoder levels 1 and 2 (half and
    quarter resolution), whose outputs come upsampled to the input size; inference
    (``forward``) is unchanged: the same weights give the same logits as the head's output."""
    torch.manual_seed(0)
    net = ResidualUNet3D(out_channels=3, f_maps=4, num_levels=4, deep_supervision=True).eval()
    assert [h.in_channels for h in net.aux_heads] == [8, 16]
    x = torch.randn(2, 1, 17, 23, 9)
    outputs = net.forward_deep(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 17, 23, 9)] * 3
    assert torch.equal(outputs[0], net(x))
    # an auxiliary output is its level's head, upsampled: smooth, not the main logits
    assert not torch.allclose(outputs[1], outputs[0])
    plain = ResidualUNet3D(out_channels=3, f_maps=4, num_levels=4)
    assert len(plain.aux_heads) == 0 and len(plain.forward_deep(x)) == 1
    assert len(ResidualUNet3D(f_maps=4, num_levels=3, deep_supervision=True).aux_heads) == 1
    with pytest.raises(ValueError, match="deep_supervision"):
        ResidualUNet3D(f_maps=4, num_levels=2, deep_supervision=True)
    net.replace_head(5)
    assert [h.out_channels for h in net.aux_heads] == [5, 5] and net.out_channels == 5

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

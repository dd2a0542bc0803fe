"""Convolution blocks driven by a layer-order string, as in pytorch-3dunet / hsf_train.

Letters: ``c`` Conv3d, ``r`` ReLU, ``l`` LeakyReLU, ``e`` ELU, ``g`` GELU,
``b`` BatchNorm3d, ``i`` InstanceNorm3d, ``s`` SwitchNorm3d.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hsftrain.models.norms import SwitchNorm3d


def feature_sizes(f_maps: int | list[int], num_levels: int) -> list[int]:
    """Channels per level: ``f_maps * 2**k`` for an int, the list itself otherwise."""
    if isinstance(f_maps, int):
        return [f_maps * 2**k for k in range(num_levels)]
    return [int(f) for f in f_maps]


#: Layer-order letters of the activations and norms, and how each layer is made.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "r": nn.ReLU,
    "l": lambda: nn.LeakyReLU(0.1),
    "e": nn.ELU,
    "g": nn.GELU,
}
NORMS: dict[str, Callable[[int], nn.Module]] = {
    "b": nn.BatchNorm3d,
    "i": lambda n: nn.InstanceNorm3d(n, affine=True),
    "s": SwitchNorm3d,
}
LAYER_LETTERS = "c" + "".join(ACTIVATIONS) + "".join(NORMS)


def validate_order(order: str) -> str:
    """Check a layer-order string.

    Raises:
        ValueError: unknown letters, or no single ``c``.
    """
    bad = sorted(set(order) - set(LAYER_LETTERS))
    if bad or order.count("c") != 1:
        raise ValueError(
            f"models.hparams.layer_order={order!r}: use exactly one 'c' plus letters from "
            f"{LAYER_LETTERS!r} (unknown: {bad})"
        )
    return order


def single_conv(
    in_channels: int, out_channels: int, order: str, kernel_size: int = 3, stride: int = 1
) -> nn.Sequential:
    """Conv3d plus the activations/normalisations of ``order``, in that order."""
    validate_order(order)
    layers: list[nn.Module] = []
    channels = in_channels
    for letter in order:
        if letter == "c":
            has_norm_after = any(n in order[order.index("c") :] for n in NORMS)
            layers.append(
                nn.Conv3d(
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride=stride,
                    padding=kernel_size // 2,
                    bias=not has_norm_after,
                )
            )
            channels = out_channels
        elif letter in ACTIVATIONS:
            layers.append(ACTIVATIONS[letter]())
        else:
            layers.append(NORMS[letter](channels))
    return nn.Sequential(*layers)


def without_activation(order: str) -> str:
    return "".join(letter for letter in order if letter not in ACTIVATIONS)


def activation_of(order: str) -> nn.Module:
    letters = [letter for letter in order if letter in ACTIVATIONS]
    return ACTIVATIONS[letters[0]]() if letters else nn.Identity()


class DoubleConv(nn.Module):
    """Two convolutions (the plain U-Net block)."""

    def __init__(self, in_channels: int, out_channels: int, order: str, kernel_size: int = 3):
        super().__init__()
        self.conv1 = single_conv(in_channels, out_channels, order, kernel_size)
        self.conv2 = single_conv(out_channels, out_channels, order, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class ResBlock(nn.Module):
    """Residual block (ExtResNetBlock): conv1 -> conv2 -> conv3 (no activation) + conv1."""

    def __init__(self, in_channels: int, out_channels: int, order: str, kernel_size: int = 3):
        super().__init__()
        self.conv1 = single_conv(in_channels, out_channels, order, kernel_size)
        self.conv2 = single_conv(out_channels, out_channels, order, kernel_size)
        self.conv3 = single_conv(out_channels, out_channels, without_activation(order), kernel_size)
        self.act = activation_of(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(x)
        return self.act(self.conv3(self.conv2(residual)) + residual)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al.) weighting a skip connection by the decoder."""

    def __init__(self, channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(channels // 2, 1)
        self.w_skip = nn.Conv3d(channels, inter, 1)
        self.w_gate = nn.Conv3d(channels, inter, 1)
        self.psi = nn.Conv3d(inter, 1, 1)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(torch.relu(self.w_skip(skip) + self.w_gate(gate))))
        return skip * alpha

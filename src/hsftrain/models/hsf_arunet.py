"""hsf_train's residual attention U-Net (ARUnet), weight-compatible with HSF's checkpoints.

HSF's published models (``arunet_4.0.0_single`` ...) were trained with hsf_train's
``ResidualUNet3D``. :class:`HSFResidualUNet3D` computes the same function and names its
parameters the same way, so the ``state_dict`` of an hsf_train checkpoint, with its
``_model.`` prefix removed, loads key for key. What differs from hsftrain's own
:class:`~hsftrain.models.unet.ResidualUNet3D`:

* downsampling: a bias-free 3x3x3 convolution of stride 2 (same channels) *before* each
  deeper level's block, instead of a strided conv that also changes the channels;
* upsampling: a 3x3x3 transposed convolution (stride 2, padding 1) whose output is cut to
  the skip's size, so any input size works without padding;
* attention gates with a SwitchNorm after each 1x1 convolution and GELU, gating the skip
  by the upsampled decoder features;
* SwitchNorm3d without batch statistics (instance + layer only) everywhere;
* conv biases are kept next to SwitchNorm (hsf_train drops them only for BatchNorm);
* the output layer is called ``final_conv`` (``head`` is an alias).

Layer-order letters follow hsf_train: ``c`` Conv3d, ``r`` ReLU, ``l`` LeakyReLU(0.1), ``e``
ELU, ``g`` GELU, ``s`` SwitchNorm3d (no batch statistics), ``b`` BatchNorm3d, ``i``
InstanceNorm3d (not affine). The published models use ``cgs``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from hsftrain.models.blocks import feature_sizes
from hsftrain.models.norms import SwitchNorm3d

log = logging.getLogger(__name__)

#: ``models.name`` of this network.
NAME = "HSFResidualUNet3D"

_ACTIVATIONS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "r": ("ReLU", nn.ReLU),
    "l": ("LeakyReLU", lambda: nn.LeakyReLU(0.1)),
    "e": ("ELU", nn.ELU),
    "g": ("GELU", nn.GELU),
}
_NORMS: dict[str, tuple[str, Callable[[int], nn.Module]]] = {
    "s": ("SwitchNorm3d", lambda n: SwitchNorm3d(n, batch_stats=False)),
    "b": ("batchnorm", nn.BatchNorm3d),
    "i": ("InstanceNorm3d", nn.InstanceNorm3d),
}
LETTERS = "c" + "".join(_ACTIVATIONS) + "".join(_NORMS)


def check_order(order: str) -> str:
    """Check an hsf_train layer-order string (one ``c``, not starting with an activation).

    Raises:
        ValueError: unknown letters, no single ``c``, or an activation first.
    """
    bad = sorted(set(order) - set(LETTERS))
    if bad or order.count("c") != 1 or order[0] in _ACTIVATIONS:
        raise ValueError(
            f"models.hparams.layer_order={order!r}: use exactly one 'c' plus letters from "
            f"{LETTERS!r}, not starting with an activation (unknown: {bad})"
        )
    return order


class HSFSingleConv(nn.Sequential):
    """3x3x3 convolution (padding 1) plus the norms/activations of ``order``, in order.

    Children are named as in hsf_train (``conv``, ``GELU``, ``SwitchNorm3d`` ...), which
    gives the checkpoint keys ``conv.weight``, ``SwitchNorm3d.mean_weight`` ...
    """

    def __init__(self, in_channels: int, out_channels: int, order: str) -> None:
        super().__init__()
        check_order(order)
        conv_at = order.index("c")
        for i, letter in enumerate(order):
            if letter == "c":
                conv = nn.Conv3d(in_channels, out_channels, 3, padding=1, bias="b" not in order)
                self.add_module("conv", conv)
            elif letter in _ACTIVATIONS:
                name, make = _ACTIVATIONS[letter]
                self.add_module(name, make())
            else:
                name, make_norm = _NORMS[letter]
                self.add_module(name, make_norm(in_channels if i < conv_at else out_channels))


class HSFResBlock(nn.Module):
    """hsf_train's ExtResNetBlock: ``act(conv3(conv2(r)) + r)`` with ``r = conv1(x)``;
    ``conv3`` has no activation. ``(B, in, X, Y, Z) -> (B, out, X, Y, Z)``."""

    def __init__(self, in_channels: int, out_channels: int, order: str) -> None:
        super().__init__()
        self.conv1 = HSFSingleConv(in_channels, out_channels, order)
        self.conv2 = HSFSingleConv(out_channels, out_channels, order)
        no_act = "".join(letter for letter in order if letter not in _ACTIVATIONS)
        self.conv3 = HSFSingleConv(out_channels, out_channels, no_act)
        acts = [letter for letter in order if letter in _ACTIVATIONS]
        # hsf_train falls back to ReLU when the order names no activation
        self.non_linearity = _ACTIVATIONS[acts[0] if acts else "r"][1]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(x)
        return self.non_linearity(self.conv3(self.conv2(residual)) + residual)


class HSFEncoder(nn.Module):
    """One encoder level: optional stride-2 3x3x3 convolution (``pooling``), then the block.

    ``(B, in, X, Y, Z) -> (B, out, ceil(X/2), ...)`` when downsampling, same size otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, order: str, downsample: bool) -> None:
        super().__init__()
        self.pooling = (
            nn.Conv3d(in_channels, in_channels, 3, stride=2, padding=1, bias=False)
            if downsample
            else None
        )
        self.basic_module = HSFResBlock(in_channels, out_channels, order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling is not None:
            x = self.pooling(x)
        return self.basic_module(x)


class HSFUpsampling(nn.Module):
    """Transposed 3x3x3 convolution (stride 2, padding 1), cut to the skip's spatial size.

    hsf_train passes ``output_size`` to the transposed convolution; computing one extra
    voxel (``output_padding=1``) and slicing gives the same values and exports to ONNX with
    dynamic spatial axes.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose3d(
            in_channels, out_channels, 3, stride=2, padding=1, output_padding=1
        )

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(B, in, X, Y, Z) -> (B, out, *like.shape[2:])`` (at most ``2X``, ``2Y``, ``2Z``)."""
        up = self.upsample(x)
        return up[:, :, : like.shape[2], : like.shape[3], : like.shape[4]]


class HSFAttentionGate(nn.Module):
    """Additive attention: ``skip * sigmoid(SN(psi(gelu(SN(W_g g) + SN(W_x skip)))))``.

    Both inputs ``(B, C, X, Y, Z)``; output like ``skip``. ``SN`` is SwitchNorm3d without
    batch statistics; ``W_g``, ``W_x`` and ``psi`` are 1x1x1 convolutions to ``C // 2``,
    ``C // 2`` and 1 channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inter = channels // 2
        # attribute names as in hsf_train's AttentionConvBlock (checkpoint keys)
        self.W_g = nn.Sequential(
            nn.Conv3d(channels, inter, 1), SwitchNorm3d(inter, batch_stats=False)
        )
        self.W_x = nn.Sequential(
            nn.Conv3d(channels, inter, 1), SwitchNorm3d(inter, batch_stats=False)
        )
        self.psi = nn.Sequential(
            nn.Conv3d(inter, 1, 1), SwitchNorm3d(1, batch_stats=False), nn.Sigmoid()
        )
        self.gelu = nn.GELU()

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(self.gelu(self.W_g(gate) + self.W_x(skip)))
        return skip * alpha


class HSFDecoder(nn.Module):
    """One decoder level: upsample, gate the skip (optional), add, residual block."""

    def __init__(self, in_channels: int, out_channels: int, order: str, use_attention: bool):
        super().__init__()
        self.upsampling = HSFUpsampling(in_channels, out_channels)
        self.basic_module = HSFResBlock(out_channels, out_channels, order)
        self.attention = HSFAttentionGate(out_channels) if use_attention else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, in, X/2, ...)`` (rounded up), ``skip`` ``(B, out, X, ...)``."""
        x = self.upsampling(x, skip)
        if self.attention is not None:
            skip = self.attention(skip, x)
        return self.basic_module(skip + x)


class HSFResidualUNet3D(nn.Module):
    """hsf_train's ``ResidualUNet3D`` (the network of HSF's published models).

    Input ``(B, in_channels, X, Y, Z)`` of any size; output logits
    ``(B, out_channels, X, Y, Z)`` (hsf_train applies the softmax inside; hsftrain applies it
    in the loss and in the exported ONNX model).

    Attributes:
        encoders: one :class:`HSFEncoder` per level, shallow to deep.
        decoders: one :class:`HSFDecoder` per level above the bottom, deep to shallow.
        final_conv: the 1x1x1 output convolution (also reachable as ``head``).

    Raises:
        ValueError: a layer order, kernel size or level count hsf_train cannot build.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 6,
        f_maps: int | list[int] = 64,
        num_levels: int = 4,
        layer_order: str = "cgs",
        conv_kernel_size: int = 3,
        use_attention: bool = True,
        **_: Any,
    ) -> None:
        super().__init__()
        if int(conv_kernel_size) != 3:
            raise ValueError(
                f"models.hparams.conv_kernel_size={conv_kernel_size}: {NAME} (hsf_train's "
                "network) only works with 3"
            )
        sizes = feature_sizes(f_maps, num_levels)
        if not sizes:
            raise ValueError("models.hparams.num_levels must be at least 1")
        self.encoders = nn.ModuleList(
            HSFEncoder(
                in_channels if level == 0 else sizes[level - 1], size, layer_order, level > 0
            )
            for level, size in enumerate(sizes)
        )
        self.decoders = nn.ModuleList(
            HSFDecoder(sizes[level], sizes[level - 1], layer_order, use_attention)
            for level in range(len(sizes) - 1, 0, -1)
        )
        self.final_conv = nn.Conv3d(sizes[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, X, Y, Z)`` for images ``(B, in_channels, X, Y, Z)``."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(x, skip)
        return self.final_conv(x)

    @property
    def head(self) -> nn.Conv3d:
        """The output layer (hsftrain's name for it; hsf_train's is ``final_conv``)."""
        return self.final_conv

    def replace_head(self, out_channels: int) -> None:
        """Swap the output layer for one with ``out_channels`` classes (fresh weights)."""
        self.final_conv = nn.Conv3d(self.final_conv.in_channels, out_channels, 1)

    @property
    def out_channels(self) -> int:
        return self.final_conv.out_channels


#: hsf_train's checkpoint keys: ``_model.`` + a key of :class:`HSFResidualUNet3D`'s state dict.
CHECKPOINT_PREFIX = "_model."
_ENCODER_CONV1 = re.compile(r"^encoders\.(\d+)\.basic_module\.conv1\.conv\.weight$")


def is_hsf_train_state(state: Mapping[str, Any]) -> bool:
    """Whether a Lightning ``state_dict`` is hsf_train's (its network under ``_model.``)."""
    return any(str(key).startswith(CHECKPOINT_PREFIX) for key in state)


def strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's weights of an hsf_train ``state_dict`` (``_model.`` removed; loss or
    metric tensors outside the network dropped)."""
    n = len(CHECKPOINT_PREFIX)
    return {k[n:]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}


def shape_hparams(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The hparams that the weights' shapes fix: ``in_channels``, ``out_channels``,
    ``f_maps`` (an int when it doubles per level, else the list), ``num_levels``,
    ``use_attention``.

    Raises:
        ValueError: not the layout of :class:`HSFResidualUNet3D` (no encoder convs or no
            ``final_conv``).
    """
    convs = {
        int(m.group(1)): tuple(v.shape) for k, v in state.items() if (m := _ENCODER_CONV1.match(k))
    }
    head = state.get("final_conv.weight")
    if not convs or head is None or sorted(convs) != list(range(len(convs))):
        raise ValueError(
            "not hsf_train's ResidualUNet3D layout (no encoders.<i>.basic_module.conv1 or "
            "final_conv weights)"
        )
    sizes = [convs[i][0] for i in range(len(convs))]
    doubling = all(s == sizes[0] * 2**k for k, s in enumerate(sizes))
    return {
        "in_channels": int(convs[0][1]),
        "out_channels": int(head.shape[0]),
        "f_maps": int(sizes[0]) if doubling else [int(s) for s in sizes],
        "num_levels": len(sizes),
        "use_attention": any(".attention." in k for k in state),
    }

"""3D U-Nets: the residual attention U-Net of hsf_train (ARUnet) and a plain U-Net."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from hsftrain.models.blocks import AttentionGate, DoubleConv, ResBlock, feature_sizes, single_conv
from hsftrain.models.hsf_arunet import NAME as HSF_NAME
from hsftrain.models.hsf_arunet import HSFResidualUNet3D

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class UNet3D(nn.Module):
    """Encoder-decoder 3D U-Net with strided-conv downsampling and transposed-conv upsampling.

    Input ``(B, in_channels, X, Y, Z)`` of any size: it is padded internally to a multiple of
    ``2 ** (num_levels - 1)`` and the output cropped back. Output: logits
    ``(B, out_channels, X, Y, Z)``.

    Attributes:
        encoders: one module per level, shallow to deep.
        decoders: one module per level above the bottom, deep to shallow.
        head: the final 1x1 convolution (replaced when fine-tuning to a new class count).
        aux_heads: with ``deep_supervision``, 1x1 convolutions on the outputs of the decoder
            levels between the bottom and the last (half resolution first; nnU-Net's
            choice), for :meth:`forward_deep`; :meth:`forward` (inference, export) ignores
            them.
    """

    residual = False

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 8,
        f_maps: int | list[int] = 64,
        num_levels: int = 4,
        layer_order: str = "cgs",
        conv_kernel_size: int = 3,
        use_attention: bool = True,
        skip: str = "sum",
        deep_supervision: bool | None = False,
        **_: Any,
    ) -> None:
        super().__init__()
        if skip not in ("sum", "concat"):
            raise ValueError(f"models.hparams.skip={skip!r}: use 'sum' or 'concat'")
        sizes = feature_sizes(f_maps, num_levels)
        if len(sizes) < 1:
            raise ValueError("models.hparams.num_levels must be at least 1")
        self.num_levels = len(sizes)
        self.skip = skip
        block = ResBlock if self.residual else DoubleConv
        self.encoders = nn.ModuleList()
        for level, channels in enumerate(sizes):
            if level == 0:
                self.encoders.append(block(in_channels, channels, layer_order, conv_kernel_size))
            else:
                down = single_conv(sizes[level - 1], channels, layer_order, conv_kernel_size, 2)
                self.encoders.append(
                    nn.Sequential(down, block(channels, channels, layer_order, conv_kernel_size))
                )
        self.decoders = nn.ModuleList()
        for level in range(len(sizes) - 1, 0, -1):
            self.decoders.append(
                DecoderLevel(
                    sizes[level],
                    sizes[level - 1],
                    block,
                    layer_order,
                    conv_kernel_size,
                    use_attention,
                    skip,
                )
            )
        self.head = nn.Conv3d(sizes[0], out_channels, 1)
        if deep_supervision and len(sizes) < 3:
            raise ValueError("models.hparams.deep_supervision needs at least 3 levels")
        self.aux_heads = nn.ModuleList(
            nn.Conv3d(sizes[level], out_channels, 1)
            for level in range(1, len(sizes) - 1 if deep_supervision else 1)
        )

    @property
    def multiple(self) -> int:
        return 2 ** (self.num_levels - 1)

    def _decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the decoder levels on the padded input, deepest first."""
        m = self.multiple
        pads: list[int] = []
        for s in reversed(x.shape[2:]):
            pads += [0, (m - s % m) % m]
        x = F.pad(x, pads)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        levels = [x]
        for decoder, skip in zip(self.decoders, reversed(skips[:-1]), strict=True):
            levels.append(decoder(levels[-1], skip))
        return levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        logits = self.head(self._decode(x)[-1])
        return logits[:, :, : size[0], : size[1], : size[2]]

    def forward_deep(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of the head, then of each auxiliary head (trilinearly upsampled from its
        level), all ``(B, out_channels, X, Y, Z)``: what deep supervision trains on."""
        size = x.shape[2:]
        levels = self._decode(x)
        outputs = [self.head(levels[-1])]
        for i, head in enumerate(self.aux_heads, start=2):
            up = F.interpolate(
                head(levels[-i]), size=levels[-1].shape[2:], mode="trilinear", align_corners=False
            )
            outputs.append(up)
        return [o[:, :, : size[0], : size[1], : size[2]] for o in outputs]

    def replace_head(self, out_channels: int) -> None:
        """Swap the output layer(s) for ones with ``out_channels`` classes (fresh weights)."""
        self.head = nn.Conv3d(self.head.in_channels, out_channels, 1)
        sizes = [cast(nn.Conv3d, h).in_channels for h in self.aux_heads]
        self.aux_heads = nn.ModuleList(nn.Conv3d(c, out_channels, 1) for c in sizes)

    @property
    def out_channels(self) -> int:
        return self.head.out_channels


class ResidualUNet3D(UNet3D):
    """ARUnet: residual blocks, attention gates, summation skips (the hsf_train default)."""

    residual = True


class DecoderLevel(nn.Module):
    """Upsample by 2 (transposed conv), join the (gated) skip, then a conv block."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block: type[nn.Module],
        order: str,
        kernel_size: int,
        use_attention: bool,
        skip: str,
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, 2, stride=2)
        self.attention = AttentionGate(out_channels) if use_attention else None
        self.skip = skip
        joined = out_channels * (2 if skip == "concat" else 1)
        self.block = block(joined, out_channels, order, kernel_size)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.attention is not None:
            skip = self.attention(skip, x)
        x = torch.cat([skip, x], 1) if self.skip == "concat" else x + skip
        return self.block(x)


#: Any network :func:`build_model` makes: hsftrain's U-Nets, or hsf_train's ARUnet (the
#: network of HSF's published models, see :mod:`hsftrain.models.hsf_arunet`).
Network = UNet3D | HSFResidualUNet3D

MODELS: dict[str, type[Network]] = {
    "ResidualUNet3D": ResidualUNet3D,
    "UNet3D": UNet3D,
    HSF_NAME: HSFResidualUNet3D,
}


def channels_last(net: ModuleT) -> ModuleT:
    """``net`` with its 5D weights in the channels-last 3D memory format (in place): 3D
    convolutions run several times faster in this layout on CPU, forward and backward."""
    # torch's stubs omit the memory_format keyword that Module.to accepts
    return net.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]


def build_model(name: str, hparams: Mapping[str, Any]) -> Network:
    """Instantiate a model by ``models.name`` from ``models.hparams``.

    Raises:
        ValueError: unknown model name.
    """
    if name not in MODELS:
        raise ValueError(f"models.name={name!r}: use one of {sorted(MODELS)}")
    return MODELS[name](**dict(hparams))

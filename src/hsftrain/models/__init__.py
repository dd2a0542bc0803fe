"""Plain ``nn.Module`` networks (no Lightning): blocks, norms and U-Nets."""

from hsftrain.models.hsf_arunet import HSFResidualUNet3D
from hsftrain.models.unet import (
    MODELS,
    Network,
    ResidualUNet3D,
    UNet3D,
    build_model,
    channels_last,
)

__all__ = [
    "MODELS",
    "HSFResidualUNet3D",
    "Network",
    "ResidualUNet3D",
    "UNet3D",
    "build_model",
    "channels_last",
]

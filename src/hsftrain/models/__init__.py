"""Plain ``nn.Module`` networks (no Lightning): blocks, norms and U-Nets."""

from hsftrain.models.unet import MODELS, ResidualUNet3D, UNet3D, build_model

__all__ = ["MODELS", "ResidualUNet3D", "UNet3D", "build_model"]

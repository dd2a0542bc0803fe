"""Switchable normalisation (Luo et al., 2019) for 3D feature maps."""

from __future__ import annotations

import torch
from torch import nn


class SwitchNorm3d(nn.Module):
    """Normalise with a learned softmax mix of instance, layer and batch statistics.

    Input and output: ``(B, C, X, Y, Z)``, in the input's memory format. Batch statistics are
    tracked as running averages and used in evaluation mode, as in BatchNorm.

    Args:
        batch_stats: mix batch statistics in (3 mixing weights, running buffers). ``False``
            mixes instance and layer statistics only (2 weights, no buffers, the same in
            training and evaluation): hsf_train's ``SwitchNorm3d(using_bn=False)``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.997,
        batch_stats: bool = True,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.batch_stats = batch_stats
        self.weight = nn.Parameter(torch.ones(1, num_features, 1, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1, 1))
        n_stats = 3 if batch_stats else 2
        self.mean_weight = nn.Parameter(torch.ones(n_stats))
        self.var_weight = nn.Parameter(torch.ones(n_stats))
        self.running_mean: torch.Tensor
        self.running_var: torch.Tensor
        if batch_stats:
            self.register_buffer("running_mean", torch.zeros(1, num_features, 1, 1, 1))
            self.register_buffer("running_var", torch.zeros(1, num_features, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics without reshaping, so that channels_last_3d inputs stay channels-last
        var_in, mean_in = torch.var_mean(x, dim=(2, 3, 4), keepdim=True)
        second = var_in + mean_in**2
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = second.mean(1, keepdim=True) - mean_ln**2
        mw = torch.softmax(self.mean_weight, 0)
        vw = torch.softmax(self.var_weight, 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln
        var = vw[0] * var_in + vw[1] * var_ln
        if not self.batch_stats:
            return self._affine(x, mean, var)
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)
            var_bn = second.mean(0, keepdim=True) - mean_bn**2
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * mean_bn)
                self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var_bn)
        else:
            mean_bn, var_bn = self.running_mean, self.running_var
        return self._affine(x, mean + mw[2] * mean_bn, var + vw[2] * var_bn)

    def _affine(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / sqrt(var + eps) * weight + bias`` in one fused scale/shift pass."""
        scale = self.weight / (var.clamp_min(0) + self.eps).sqrt()
        shift = self.bias - mean * scale
        return x * scale + shift

"""Pre-processing, augmentation (torchio) and post-processing, from config.

Pre-processing (canonical RAS+ orientation) happens when a volume is loaded. Random
augmentations are torchio transforms. Post-processing (z-normalisation, optional noise,
crop/pad to ``patch_size`` or to a multiple of 8) is done directly on tensors: it runs
on every item, so it is kept cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchio as tio


def augmentation(cfg: Mapping[str, Any]) -> tio.Compose | None:
    """Random spatial then intensity transforms, each applied with its probability ``p``.

    Keys of the ``augmentation`` group: flip, affine, elastic, motion, blur, gamma (noise is
    added after normalisation, see :func:`postprocess`). A missing key or ``p: 0`` disables
    a transform. Returns None when everything is disabled.
    """

    def p(name: str) -> float:
        return float((cfg.get(name) or {}).get("p", 0.0))

    out: list[tio.Transform] = []
    if p("flip"):
        axes = tuple(cfg["flip"].get("axes") or ["LR"])
        out.append(tio.RandomFlip(axes=axes, flip_probability=1.0, p=p("flip")))
    if p("affine"):
        a = cfg["affine"]
        out.append(
            tio.RandomAffine(
                scales=tuple(a.get("scales", (0.9, 1.1))),
                degrees=a.get("degrees", 10),
                translation=a.get("translation", 0),
                p=p("affine"),
            )
        )
    if p("elastic"):
        e = cfg["elastic"]
        out.append(
            tio.RandomElasticDeformation(
                num_control_points=e.get("num_control_points", 7),
                max_displacement=e.get("max_displacement", 3),
                p=p("elastic"),
            )
        )
    if p("motion"):
        m = cfg["motion"]
        out.append(
            tio.RandomMotion(
                degrees=m.get("degrees", 5),
                translation=m.get("translation", 5),
                num_transforms=m.get("num_transforms", 2),
                p=p("motion"),
            )
        )
    if p("blur"):
        out.append(tio.RandomBlur(std=tuple(cfg["blur"].get("std", (0, 0.5))), p=p("blur")))
    if p("gamma"):
        log_gamma = tuple(cfg["gamma"].get("log_gamma", (-0.3, 0.3)))
        out.append(tio.RandomGamma(log_gamma=log_gamma, p=p("gamma")))
    return tio.Compose(out) if out else None


def z_normalize(image: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over all voxels."""
    std, mean = torch.std_mean(image)
    return (image - mean) / std.clamp_min(1e-6)


def fit_shape(
    image: torch.Tensor, label: torch.Tensor, patch_size: Sequence[int] | None, multiple: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre crop/pad ``(1, X, Y, Z)`` image and ``(X, Y, Z)`` label to ``patch_size``, or
    pad evenly to a multiple of ``multiple`` when it is None (as inference does). Images are
    padded with their minimum, labels with 0."""
    shape = image.shape[1:]
    target = [int(s) for s in patch_size] if patch_size else [s + (-s) % multiple for s in shape]
    slices, pads = [], []
    for s, t in zip(shape, target, strict=True):
        if s > t:
            start = (s - t) // 2
            slices.append(slice(start, start + t))
            pads.append((0, 0))
        else:
            slices.append(slice(0, s))
            before = (t - s) // 2
            pads.append((before, t - s - before))
    image = image[(slice(None), *slices)]
    label = label[tuple(slices)]
    flat = [p for pair in reversed(pads) for p in pair]
    image = F.pad(image, flat, value=float(image.min()))
    label = F.pad(label, flat, value=0)
    return image, label


def postprocess(
    image: torch.Tensor,
    label: torch.Tensor,
    patch_size: Sequence[int] | None,
    noise: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-normalise, add Gaussian noise with probability ``noise.p``, fit the shape."""
    image = z_normalize(image)
    if noise and float(noise.get("p", 0)):
        if float(torch.rand((), generator=generator)) < float(noise["p"]):
            low, high = (float(v) for v in noise.get("std", (0.0, 0.05)))
            std = low + (high - low) * float(torch.rand((), generator=generator))
            image = image + std * torch.randn(image.shape, generator=generator)
    return fit_shape(image, label, patch_size)

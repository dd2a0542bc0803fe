"""The torchio augmentation backend (``augmentation.backend=torchio``) and shape fitting.

Pre-processing (canonical RAS+ orientation, label remapping, z-normalisation) is done once,
by the prepared-data cache (:mod:`hsftrain.data.cache`). With this backend, random
augmentations are torchio transforms applied to each training patch on the CPU (in the
data-loader workers); the default ``torch`` backend (:mod:`hsftrain.data.augment`) does the
same on whole batches on the model's device, and training with it never imports torchio (nor
SimpleITK, which torchio loads). Post-processing (z-normalisation, optional
noise, crop/pad to a shape or to a multiple of 8) is also used to build calibration inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from hsftrain.data.augmentation_spec import AugmentationSpec, Transform
from hsftrain.data.intensity import z_normalize

if TYPE_CHECKING:
    import torchio as tio

#: The torchio transform (class name) of each ``augmentation`` key, and the torchio arguments
#: it sets besides the key's parameters (:mod:`hsftrain.data.augmentation_spec`); a key's
#: ``p`` is the probability it is applied; noise: :func:`add_noise`.
TORCHIO: dict[str, tuple[str, dict[str, Any]]] = {
    "flip": ("RandomFlip", {"flip_probability": 1.0}),
    "affine": ("RandomAffine", {}),
    "elastic": ("RandomElasticDeformation", {}),
    "motion": ("RandomMotion", {}),
    "blur": ("RandomBlur", {}),
    "gamma": ("RandomGamma", {}),
}


def augmentation(cfg: Mapping[str, Any] | AugmentationSpec) -> tio.Compose | None:
    """Random spatial then intensity transforms (:data:`TORCHIO`, in that order), each
    applied with its probability ``p``.

    A missing key or ``p: 0`` disables a transform; a parameter missing or null takes its
    default (:data:`hsftrain.data.augmentation_spec.DEFAULTS`; noise is added after
    normalisation, see :func:`postprocess`). Returns None when everything is disabled.

    Raises:
        ConfigError: an invalid ``augmentation`` key (names it).
    """
    import torchio as tio

    spec = AugmentationSpec.from_config(cfg)
    out: list[tio.Transform] = []
    for name, (transform, extra) in TORCHIO.items():
        section = spec[name]
        if section.on:
            out.append(getattr(tio, transform)(**section.params, **extra, p=section.p))
    return tio.Compose(out) if out else None


def torchio_transform(
    cfg: Mapping[str, Any] | AugmentationSpec,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """Per-patch augmentation with torchio: the transforms of :func:`augmentation`, then
    the patch's mean and std restored (the cache has z-normalised it), then noise.

    Returns None when everything is disabled.
    """
    spec = AugmentationSpec.from_config(cfg)
    compose = augmentation(spec)
    noise = spec["noise"]
    if compose is None and not noise.on:
        return None

    def apply(
        image: torch.Tensor, label: torch.Tensor, spacing: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, X, Y, Z)`` image and ``(X, Y, Z)`` label of one patch."""
        if compose is not None:
            import torchio as tio

            affine = np.diag([*(float(s) for s in spacing), 1.0])
            subject = compose(
                tio.Subject(
                    image=tio.ScalarImage(tensor=image, affine=affine),
                    label=tio.LabelMap(tensor=label[None].long(), affine=affine),
                )
            )
            std, mean = torch.std_mean(image)
            out = subject["image"].data.float()
            out_std, out_mean = torch.std_mean(out)
            image = (out - out_mean) / out_std.clamp_min(1e-6) * std + mean
            label = subject["label"].data[0].to(label.dtype)
        return add_noise(image, noise), label

    return apply


def add_noise(
    image: torch.Tensor,
    noise: Mapping[str, Any] | Transform | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian noise with probability ``noise.p`` and a std drawn in ``noise.std``
    (``noise``: the ``augmentation.noise`` section or its :class:`Transform`)."""
    if noise is not None and not isinstance(noise, Transform):
        noise = Transform.from_config("noise", noise)
    if noise is not None and noise.on:
        if float(torch.rand((), generator=generator)) < noise.p:
            low, high = (float(v) for v in noise["std"])
            std = low + (high - low) * float(torch.rand((), generator=generator))
            image = image + std * torch.randn(image.shape, generator=generator)
    return image


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
    noise: Mapping[str, Any] | Transform | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-normalise (:func:`hsftrain.data.intensity.z_normalize`), add Gaussian noise with
    probability ``noise.p``, fit the shape (``image`` ``(1, X, Y, Z)`` on the CPU)."""
    image = add_noise(torch.from_numpy(z_normalize(image.numpy())), noise, generator)
    return fit_shape(image, label, patch_size)

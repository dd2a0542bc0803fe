"""torchio pipelines: pre-processing, augmentation and post-processing, from config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torchio as tio


def preprocessing() -> list[tio.Transform]:
    """Canonical (RAS+) orientation. Intensity normalisation comes after augmentation."""
    return [tio.ToCanonical()]


def augmentation(cfg: Mapping[str, Any]) -> list[tio.Transform]:
    """Random spatial then intensity transforms, each applied with its probability ``p``.

    Keys of the ``augmentation`` group: flip, affine, elastic, motion, blur, gamma (noise is
    added after normalisation, see :func:`postprocessing`). A missing key or ``p: 0``
    disables a transform.
    """

    def p(name: str) -> float:
        return float((cfg.get(name) or {}).get("p", 0.0))

    out: list[tio.Transform] = []
    if p("flip"):
        axes = tuple((cfg["flip"].get("axes") or ["LR"]))
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
        out.append(
            tio.RandomGamma(log_gamma=tuple(cfg["gamma"].get("log_gamma", (-0.3, 0.3))), p=p("gamma"))
        )
    return out


def postprocessing(
    patch_size: Sequence[int] | None, noise: Mapping[str, Any] | None = None
) -> list[tio.Transform]:
    """Z-normalisation, optional noise, then crop/pad to ``patch_size`` (or pad to a
    multiple of 8 when it is null)."""
    out: list[tio.Transform] = [tio.ZNormalization()]
    if noise and float(noise.get("p", 0)):
        out.append(tio.RandomNoise(std=tuple(noise.get("std", (0, 0.05))), p=float(noise["p"])))
    if patch_size:
        out.append(tio.CropOrPad(tuple(int(s) for s in patch_size), padding_mode="minimum"))
    else:
        out.append(tio.EnsureShapeMultiple(8, method="pad"))
    return out


def build_transform(
    aug_cfg: Mapping[str, Any] | None, patch_size: Sequence[int] | None, train: bool
) -> tio.Compose:
    """The full pipeline; augmentation only when ``train``."""
    steps = preprocessing()
    if train and aug_cfg:
        steps += augmentation(aug_cfg)
    steps += postprocessing(patch_size, aug_cfg.get("noise") if (train and aug_cfg) else None)
    return tio.Compose(steps)

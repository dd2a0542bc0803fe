"""The network's depth against its inputs: a U-Net whose deepest level is a single voxel
has no normalisation statistics, and trains to NaN from the first step.

:func:`check_network_fits` runs once the data are known (the shapes from the images'
headers), before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hsftrain.core.errors import ConfigError
from hsftrain.data.nifti import header_info


def deepest_voxels(shape: Sequence[int], num_levels: int) -> int:
    """Voxels of the deepest feature map of a ``num_levels`` U-Net on an input of
    ``shape`` (the network pads each axis to a multiple of ``2 ** (num_levels - 1)``)."""
    m = 2 ** (int(num_levels) - 1)
    return math.prod(math.ceil(int(s) / m) for s in shape)


def max_levels(shape: Sequence[int]) -> int:
    """The most levels a U-Net can have on ``shape`` with more than one deepest voxel."""
    levels = 1
    while deepest_voxels(shape, levels + 1) > 1:
        levels += 1
    return levels


def check_depth(
    num_levels: int,
    shapes: Sequence[Sequence[int]],
    patch_size: Sequence[int] | None,
    key: str = "models.hparams.num_levels",
) -> None:
    """Refuse a network too deep for its inputs: a deepest level of one voxel has no
    normalisation statistics, and training produces NaN from the first step.

    Args:
        num_levels: the network's levels.
        shapes: the training volumes' shapes (used when ``patch_size`` is None: each
            volume is then padded to a multiple of 8).
        patch_size: the crop every volume is brought to, if set.

    Raises:
        ConfigError: names the key, the smallest input and the largest usable depth.
    """
    if patch_size:
        inputs = [tuple(int(s) for s in patch_size)]
        where = f"datasets.patch_size={list(inputs[0])}"
    else:
        inputs = [tuple(int(s) + (-int(s)) % 8 for s in shape) for shape in shapes]
        where = "the smallest training volume"
    if not inputs:
        return
    smallest = min(inputs, key=lambda s: (max(s), math.prod(s)))
    if deepest_voxels(smallest, num_levels) > 1:
        return
    size = "x".join(map(str, smallest))
    shown = num_levels if key.endswith("num_levels") else f"{num_levels} levels"
    raise ConfigError(
        f"`{key}`={shown} is too deep for {where} ({size} voxels after padding): the "
        f"deepest level would be a single voxel and training would produce NaN; use at "
        f"most {max_levels(smallest)} levels (models.hparams.num_levels) or a larger "
        "datasets.patch_size"
    )


def check_network_fits(
    hparams: dict[str, Any], images: Sequence[Path], patch_size: Sequence[int] | None
) -> None:
    """:func:`check_depth` for a network's ``hparams`` (``f_maps`` list or ``num_levels``)
    and the training ``images`` (shapes from their headers; not read when ``patch_size``
    is set).

    Raises:
        ConfigError: the network is too deep (see :func:`check_depth`).
    """
    f_maps = hparams.get("f_maps")
    levels = len(f_maps) if isinstance(f_maps, list | tuple) else int(hparams.get("num_levels", 1))
    shapes: list[tuple[int, ...]] = []
    if not patch_size:
        shapes = [header_info(Path(p))[0] for p in images]
    key = (
        "models.hparams.f_maps" if isinstance(f_maps, list | tuple) else "models.hparams.num_levels"
    )
    check_depth(levels, shapes, patch_size, key)

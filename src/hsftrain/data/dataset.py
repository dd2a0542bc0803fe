"""Torch datasets over the prepared-data cache: fixed-size training patches and whole
validation volumes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from hsftrain.data.cache import PreparedSubject
from hsftrain.data.transforms import fit_shape

#: An item transform of the torchio backend: (image (1, X, Y, Z), label (X, Y, Z),
#: spacing (3,)) -> (image, label).
ItemTransform = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]


def auto_patch_size(shapes: Sequence[Sequence[int]], multiple: int) -> tuple[int, int, int]:
    """The median shape, each axis rounded up to ``multiple`` (the network's input multiple:
    ``2 ** (num_levels - 1)``)."""
    median = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
    return tuple(int(math.ceil(m / multiple) * multiple) for m in median)  # type: ignore[return-value]


def patch_start(size: int, patch: int, rng: np.random.Generator, centre: int | None = None) -> int:
    """Start index of a ``patch``-long window on an axis of ``size`` voxels.

    A window larger than the axis starts at a negative index (the volume is placed at a
    random position inside it); with ``centre``, the window is centred on that voxel as far
    as the volume allows.
    """
    low, high = min(0, size - patch), max(0, size - patch)
    if centre is None:
        return int(rng.integers(low, high + 1))
    return int(np.clip(centre - patch // 2, low, high))


def crop_pad(
    array: np.ndarray, starts: Sequence[int], patch: Sequence[int], fill: float
) -> np.ndarray:
    """The ``patch``-sized window of ``array`` starting at ``starts`` (may lie partly
    outside; the outside is ``fill``)."""
    out = np.full(tuple(patch), fill, dtype=array.dtype)
    src, dst = [], []
    for start, size, length in zip(starts, array.shape, patch, strict=True):
        a, b = max(start, 0), min(start + length, size)
        src.append(slice(a, b))
        dst.append(slice(a - start, b - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


def loss_table(subject: PreparedSubject) -> int:
    """Index of the loss table of a prepared subject: the one discovery gave it when its
    map lacks some of its dataset's classes (:attr:`hsftrain.data.subjects.Subject.table`),
    else its dataset's."""
    source = subject.source
    table = source.subject.table if source is not None else None
    return subject.dataset if table is None else int(table)


class _SubjectDataset(Dataset[dict[str, Any]]):
    """Items made from a list of prepared subjects, one per subject."""

    def __init__(self, prepared: Sequence[PreparedSubject]) -> None:
        self.prepared = list(prepared)

    def __len__(self) -> int:
        return len(self.prepared)


class PatchDataset(_SubjectDataset):
    """Training items: one random ``patch_size`` window of each prepared subject.

    With probability ``foreground_ratio`` the window is centred on a random foreground
    voxel (foreground oversampling). Items: ``{"image": (1, *patch) float32,
    "label": (*patch) uint8, "dataset": int, "id": str, "spacing": (3,) float32}``; every
    item has the same shape, so batches need no padding. Items also hold ``"table"``: the
    index of the subject's loss table (:func:`loss_table`).

    Args:
        transform: per-item augmentation (the torchio backend), applied to the patch.
    """

    def __init__(
        self,
        prepared: Sequence[PreparedSubject],
        patch_size: Sequence[int],
        foreground_ratio: float = 0.33,
        transform: ItemTransform | None = None,
    ) -> None:
        super().__init__(prepared)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.foreground_ratio = float(foreground_ratio)
        self.transform = transform

    def __getitem__(self, i: int) -> dict[str, Any]:
        subject = self.prepared[i]
        # torch's RNG is seeded per worker by Lightning: reproducible and distinct per worker
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        image, label = subject.arrays()
        centre = None
        if rng.random() < self.foreground_ratio:
            fg = subject.foreground()
            if len(fg):
                centre = fg[rng.integers(len(fg))]
        starts = [
            patch_start(s, p, rng, None if centre is None else int(centre[d]))
            for d, (s, p) in enumerate(zip(image.shape, self.patch_size, strict=True))
        ]
        low = float(subject.minimum)
        image_t = torch.from_numpy(crop_pad(image, starts, self.patch_size, low).astype(np.float32))
        label_t = torch.from_numpy(crop_pad(label, starts, self.patch_size, 0))
        spacing = torch.tensor(subject.spacing, dtype=torch.float32)
        image_t = image_t[None]
        if self.transform is not None:
            image_t, label_t = self.transform(image_t, label_t, spacing)
        return {
            "image": image_t,
            "label": label_t,
            "dataset": subject.dataset,
            "table": loss_table(subject),
            "id": subject.id,
            "spacing": spacing,
        }


class VolumeDataset(_SubjectDataset):
    """Validation items: whole volumes padded to a multiple of ``multiple`` (as inference
    does) or centre-cropped/padded to ``shape`` when given."""

    def __init__(
        self,
        prepared: Sequence[PreparedSubject],
        multiple: int = 8,
        shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(prepared)
        self.multiple = int(multiple)
        self.shape = shape

    def __getitem__(self, i: int) -> dict[str, Any]:
        subject = self.prepared[i]
        image, label = subject.arrays(mmap=False)
        image_t, label_t = fit_shape(
            torch.from_numpy(image.astype(np.float32))[None],
            torch.from_numpy(label),
            self.shape,
            self.multiple,
        )
        return {
            "image": image_t,
            "label": label_t,
            "dataset": subject.dataset,
            "table": loss_table(subject),
            "id": subject.id,
            "spacing": torch.tensor(subject.spacing, dtype=torch.float32),
        }


def pad_collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor | list[str]]:
    """Stack items, padding each volume to the largest shape of the batch."""
    shape = [max(it["image"].shape[d] for it in items) for d in range(1, 4)]

    def pad(t: torch.Tensor, value: float) -> torch.Tensor:
        extra: list[int] = []
        for d in (2, 1, 0):
            extra += [0, shape[d] - t.shape[d - 3]]
        return F.pad(t, extra, value=value)

    return {
        "image": torch.stack([pad(it["image"], float(it["image"].min())) for it in items]),
        "label": torch.stack([pad(it["label"], 0) for it in items]),
        "dataset": torch.tensor([it["dataset"] for it in items]),
        "table": torch.tensor([it.get("table", it["dataset"]) for it in items]),
        "id": [it["id"] for it in items],
        "spacing": torch.stack([it["spacing"] for it in items]),
    }

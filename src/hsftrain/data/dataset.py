"""A torch Dataset of subjects: load, remap labels, transform."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio
from torch.utils.data import Dataset

from hsftrain.data.discovery import DatasetSpec, Subject, read_label
from hsftrain.data.nifti import load_volume
from hsftrain.data.transforms import augmentation, postprocess


class SubjectDataset(Dataset):
    """Items ``{"image": (1, X, Y, Z) float, "label": (X, Y, Z) long, "dataset": int}``.

    Volumes are loaded in canonical (RAS+) orientation, augmented when ``augment`` is given
    (the ``augmentation`` config group), then post-processed to ``patch_size``.
    """

    def __init__(
        self,
        subjects: Sequence[Subject],
        specs: Sequence[DatasetSpec],
        patch_size: Sequence[int] | None,
        augment: Mapping[str, Any] | None = None,
    ) -> None:
        self.subjects = list(subjects)
        self.specs = {s.index: s for s in specs}
        self.patch_size = patch_size
        self.transform = augmentation(augment) if augment else None
        self.noise = augment.get("noise") if augment else None

    def __len__(self) -> int:
        return len(self.subjects)

    def load(self, i: int) -> tio.Subject:
        subject = self.subjects[i]
        image, affine = load_volume(subject.image, np.float32, canonical=True)
        label = read_label(self.specs[subject.dataset], subject.label, canonical=True)
        return tio.Subject(
            spacing=np.sqrt((affine[:3, :3] ** 2).sum(0)),
            image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=affine),
            label=tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=affine),
        )

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int | str]:
        subject = self.load(i)
        if self.transform is not None:
            subject = self.transform(subject)
        image, label = postprocess(
            subject["image"].data.float(),
            subject["label"].data[0].long(),
            self.patch_size,
            self.noise,
        )
        return {
            "image": image,
            "label": label,
            "dataset": self.subjects[i].dataset,
            "id": self.subjects[i].id,
            "spacing": torch.as_tensor(subject["spacing"], dtype=torch.float64),
        }


def pad_collate(items: list[dict]) -> dict[str, torch.Tensor | list[str]]:
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
        "id": [it["id"] for it in items],
        "spacing": torch.stack([it["spacing"] for it in items]),
    }

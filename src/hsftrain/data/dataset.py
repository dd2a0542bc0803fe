"""A torch Dataset of subjects: load, remap labels, transform."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchio as tio
from torch.utils.data import Dataset

from hsftrain.data.discovery import DatasetSpec, Subject, read_label
from hsftrain.data.nifti import load_volume


class SubjectDataset(Dataset):
    """Items ``{"image": (1, X, Y, Z) float, "label": (X, Y, Z) long, "dataset": int}``."""

    def __init__(
        self, subjects: Sequence[Subject], specs: Sequence[DatasetSpec], transform: tio.Transform
    ) -> None:
        self.subjects = list(subjects)
        self.specs = {s.index: s for s in specs}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.subjects)

    def load(self, i: int) -> tio.Subject:
        subject = self.subjects[i]
        image, affine = load_volume(subject.image, np.float32)
        label = read_label(self.specs[subject.dataset], subject.label)
        return tio.Subject(
            image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=affine),
            label=tio.LabelMap(tensor=torch.from_numpy(label)[None], affine=affine),
        )

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int | str]:
        out = self.transform(self.load(i))
        return {
            "image": out["image"].data.float(),
            "label": out["label"].data[0].long(),
            "dataset": self.subjects[i].dataset,
            "id": self.subjects[i].id,
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
    }

"""Lightning data module over discovered subjects and a split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from hsftrain.data.dataset import SubjectDataset, pad_collate
from hsftrain.data.discovery import Discovery
from hsftrain.data.splits import Split


class SegmentationDataModule(L.LightningDataModule):
    """Train loader (augmented, shuffled) and validation loader (no augmentation)."""

    def __init__(
        self,
        discovery: Discovery,
        split: Split,
        datasets_cfg: Mapping[str, Any],
        augmentation_cfg: Mapping[str, Any] | None,
    ) -> None:
        super().__init__()
        patch: Sequence[int] | None = datasets_cfg.get("patch_size")
        subjects = discovery.subjects
        self.train_set = SubjectDataset(
            [subjects[i] for i in split.train],
            discovery.datasets,
            patch,
            augmentation_cfg,
        )
        self.val_set = SubjectDataset(
            [subjects[i] for i in split.val],
            discovery.datasets,
            patch,
        )
        self.batch_size = int(datasets_cfg.get("batch_size", 1))
        self.num_workers = int(datasets_cfg.get("num_workers", 0))
        self.pin_memory = bool(datasets_cfg.get("pin_memory", False))

    def _loader(self, dataset: SubjectDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=pad_collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

"""Lightning data module over the prepared-data cache.

Training batches are fixed-size patches (one shape for the whole run: cudnn autotuning and
``torch.compile`` need it), augmented by the configured backend:

- ``augmentation.backend=torch``, ``device=auto|cuda``: on the model's device, right after
  the batch is transferred (:meth:`on_after_batch_transfer`);
- ``augmentation.backend=torch``, ``device=cpu``: on the CPU, in the loader's collate
  function (so in the worker processes when ``datasets.num_workers > 0``);
- ``augmentation.backend=torchio``: torchio transforms on each patch in the workers.

Validation batches are whole volumes, never augmented.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, default_collate

from hsftrain.config.compose import ConfigError
from hsftrain.data.augment import BatchAugment
from hsftrain.data.cache import (
    PreparedSubject,
    PrepareSettings,
    cache_dir,
    median_shape,
    prepare,
)
from hsftrain.data.dataset import PatchDataset, VolumeDataset, auto_patch_size, pad_collate
from hsftrain.data.splits import Split
from hsftrain.data.subjects import Discovery
from hsftrain.data.transforms import torchio_transform
from hsftrain.data.voxel_sizes import warn_if_mixed

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torchio")
DEVICES = ("auto", "cpu", "cuda")


class _AugmentCollate:
    """Collate, then augment the batch on the CPU (picklable for worker processes)."""

    def __init__(self, augment: BatchAugment) -> None:
        self.augment = augment

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(items)
        batch["image"], batch["label"] = self.augment(
            batch["image"], batch["label"], batch["spacing"]
        )
        return batch


class SegmentationDataModule(L.LightningDataModule):
    """Train loader (patches, augmented, shuffled) and validation loader (whole volumes).

    Args:
        train, val: prepared subjects of each side of the split.
        patch_size: training patch ``(X, Y, Z)``.
        datasets_cfg: the ``datasets`` group (batch_size, num_workers, pin_memory,
            foreground_ratio).
        augmentation_cfg: the ``augmentation`` group (backend, device and transforms).
        seed: seeds the augmentation.
        multiple: validation volumes are padded to a multiple of this.

    Raises:
        ConfigError: an unknown backend or device.
    """

    def __init__(
        self,
        train: Sequence[PreparedSubject],
        val: Sequence[PreparedSubject],
        patch_size: Sequence[int],
        datasets_cfg: Mapping[str, Any],
        augmentation_cfg: Mapping[str, Any] | None,
        seed: int = 0,
        multiple: int = 8,
    ) -> None:
        super().__init__()
        aug = dict(augmentation_cfg or {})
        backend = str(aug.get("backend") or "torch")
        device = str(aug.get("device") or "auto")
        if backend not in BACKENDS:
            raise ConfigError(f"augmentation.backend={backend!r}: use one of {', '.join(BACKENDS)}")
        if device not in DEVICES:
            raise ConfigError(f"augmentation.device={device!r}: use one of {', '.join(DEVICES)}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "augmentation.device=cuda but no CUDA device is available: use "
                "augmentation.device=auto (the model's device) or cpu"
            )
        self.batch_size = int(datasets_cfg.get("batch_size", 1))
        self.num_workers = int(datasets_cfg.get("num_workers", 0))
        pin = datasets_cfg.get("pin_memory", "auto")
        self.pin_memory = torch.cuda.is_available() if str(pin) == "auto" else bool(pin)
        self.on_device: BatchAugment | None = None
        self.collate: Any = default_collate
        item_transform = None
        if backend == "torchio":
            item_transform = torchio_transform(aug)
        else:
            augment = BatchAugment(aug, seed=seed)
            if augment.enabled and device == "cpu":
                self.collate = _AugmentCollate(augment)
            elif augment.enabled:
                self.on_device = augment
        ratio = float(datasets_cfg.get("foreground_ratio", 0.33))
        self.train_set = PatchDataset(train, patch_size, ratio, item_transform)
        self.val_set = VolumeDataset(val, multiple)

    def _loader(
        self, dataset: Any, shuffle: bool, collate: Any, drop_last: bool = False
    ) -> DataLoader[dict[str, Any]]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        # every batch full: one shape for the whole run (no recompilation, cudnn tuned once)
        drop_last = len(self.train_set) > self.batch_size
        return self._loader(self.train_set, True, self.collate, drop_last)

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader(self.val_set, False, pad_collate)

    def setup(self, stage: str) -> None:
        """Under DDP, give each process its own augmentation stream."""
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if rank and self.on_device is not None:
            self.on_device.reseed(rank)
        if rank and isinstance(self.collate, _AugmentCollate):
            self.collate.augment.reseed(rank)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on the model's device."""
        if self.on_device is not None and self.trainer is not None and self.trainer.training:
            batch["image"], batch["label"] = self.on_device(
                batch["image"], batch["label"], batch["spacing"]
            )
        return batch


#: Largest automatic patch edge (voxels): whole-head volumes train on patches, not wholes.
MAX_AUTO_PATCH = 128


def patch_size(
    configured: Sequence[int] | None, shapes: Sequence[Sequence[int]], multiple: int
) -> tuple[int, int, int]:
    """``datasets.patch_size``, or the median training shape rounded up to ``multiple``
    (at most :data:`MAX_AUTO_PATCH` per axis).

    Raises:
        ConfigError: a patch size that is not three positive integers.
    """
    if configured is not None:
        values = list(configured)
        if len(values) != 3 or any(int(v) <= 0 for v in values):
            raise ConfigError(
                f"datasets.patch_size={values}: give three positive integers [X, Y, Z], or "
                "null for the median shape of the data"
            )
        return tuple(int(v) for v in values)  # type: ignore[return-value]
    auto = auto_patch_size(shapes, multiple)
    cap = MAX_AUTO_PATCH // multiple * multiple
    return tuple(min(a, cap) for a in auto)  # type: ignore[return-value]


def prepare_split(
    cfg: Mapping[str, Any], found: Discovery, split: Split
) -> tuple[list[PreparedSubject], list[PreparedSubject]]:
    """Prepare the split's subjects into the cache (reusing what is there).

    Returns:
        The training subjects (bagging: a subject may appear twice) and the validation ones.

    Raises:
        DataError: a file that cannot be prepared (named).
    """
    datasets_cfg = cfg["datasets"]
    needed = sorted(set(split.train) | set(split.val))
    prepared = prepare(
        found, cache_dir(datasets_cfg), PrepareSettings.from_config(datasets_cfg), needed
    )
    by_index = dict(zip(needed, prepared, strict=True))
    warn_if_mixed([by_index[i].spacing for i in sorted(set(split.train))], "the training images")
    return [by_index[i] for i in split.train], [by_index[i] for i in split.val]


def input_multiple(num_levels: int) -> int:
    """Shapes the network takes without internal padding (at least 8, as inference pads)."""
    return max(8, 2 ** (int(num_levels) - 1))


def build_datamodule(
    settings: Any,
    train: Sequence[PreparedSubject],
    val: Sequence[PreparedSubject],
    num_levels: int,
) -> SegmentationDataModule:
    """The data module of a run's ``settings`` (its
    :class:`~hsftrain.training.settings.TrainingSettings`, typed there: the data layer
    does not import training): training patches of
    ``datasets.patch_size`` (automatic when null) and whole validation volumes.

    Raises:
        ConfigError: bad ``datasets``/``augmentation`` values.
    """
    data = settings.data
    multiple = input_multiple(num_levels)
    patch = patch_size(data.patch_size, [p.shape for p in train], multiple)
    log.info(
        "training on %s patches (datasets.patch_size%s), median volume %s",
        "x".join(map(str, patch)),
        "" if data.patch_size is not None else ": automatic",
        "x".join(map(str, median_shape(train))),
    )
    loading = {
        "batch_size": data.batch_size,
        "num_workers": data.num_workers,
        "pin_memory": data.pin_memory,
        "foreground_ratio": data.foreground_ratio,
    }
    augment = {
        **settings.augment.spec,
        "backend": str(settings.augment.backend),
        "device": str(settings.augment.device),
    }
    return SegmentationDataModule(
        train, val, patch, loading, augment, seed=settings.seed, multiple=multiple
    )

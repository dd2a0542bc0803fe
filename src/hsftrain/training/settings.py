"""Typed settings of a ``train`` / ``finetune`` run, built once from the composed config.

:func:`hsftrain.training.validate.validate_training` checks every key a run uses and
returns a frozen :class:`TrainingSettings`; the code below it (the data module, the
LightningModule's builder, the trainer's arguments, the steps of a run) reads these typed
values, not the ``DictConfig``. A key that takes one of a few strings is an
:class:`enum.StrEnum`: its YAML value is the same string.

The composed config itself is kept (:attr:`TrainingSettings.config`, plain): it is what a
run writes to ``config.yaml`` and what checkpoints store, unchanged.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class RunKind(enum.StrEnum):
    """Training from scratch, or fine-tuning a pretrained network."""

    TRAIN = "train"
    FINETUNE = "finetune"


class Precision(enum.StrEnum):
    """``lightning.precision``: Lightning's precision names."""

    TRUE32 = "32-true"
    FULL32 = "32"
    MIXED16 = "16-mixed"
    HALF16 = "16"
    BF16_MIXED = "bf16-mixed"
    BF16 = "bf16"
    TRUE16 = "16-true"
    BF16_TRUE = "bf16-true"
    TRUE64 = "64-true"
    FULL64 = "64"
    TRANSFORMER_ENGINE = "transformer-engine"
    TRANSFORMER_ENGINE_16 = "transformer-engine-float16"


class Accelerator(enum.StrEnum):
    """``lightning.accelerator``."""

    AUTO = "auto"
    CPU = "cpu"
    GPU = "gpu"
    CUDA = "cuda"
    MPS = "mps"
    TPU = "tpu"


class LoggerKind(enum.StrEnum):
    """``logger.name``."""

    TENSORBOARD = "tensorboard"
    CSV = "csv"
    WANDB = "wandb"


class AugmentBackend(enum.StrEnum):
    """``augmentation.backend``: batched torch transforms, or torchio's per patch."""

    TORCH = "torch"
    TORCHIO = "torchio"


class AugmentDevice(enum.StrEnum):
    """``augmentation.device``: where torch augmentation runs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class FinetuneMode(enum.StrEnum):
    """``finetuning.mode``: the side of the U-Net thawed first."""

    ENCODER = "encoder"
    DECODER = "decoder"


class CacheDtype(enum.StrEnum):
    """``datasets.cache_dtype``."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"


class NonFinite(enum.StrEnum):
    """``datasets.nonfinite``: refuse, or clean, images holding NaN/Inf."""

    ERROR = "error"
    CLEAN = "clean"


class CAMode(enum.StrEnum):
    """CA granularity of a label scheme (``ca_type`` of a dataset, ``ca_mode`` of a model)."""

    FINE = "1/2/3"
    CA1_CA23 = "1/23"
    CA123 = "123"
    ANTERIOR_POSTERIOR = "ap"
    WHOLE = "whole"


#: ``"auto"`` or a boolean (``datasets.pin_memory``, ``models.compile``).
AutoBool = str | bool


@dataclass(frozen=True)
class DataSettings:
    """The ``datasets`` keys a run reads (the dataset specs stay in the config)."""

    batch_size: int = 1
    num_workers: int = 0
    pin_memory: AutoBool = "auto"
    foreground_ratio: float = 0.33
    cache_dtype: CacheDtype = CacheDtype.FLOAT16
    nonfinite: NonFinite = NonFinite.ERROR
    train_ratio: float = 0.8
    replace: bool = False
    k_sample: int | None = None
    train_on_all: bool = False
    patch_size: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class NetworkSettings:
    """``models.name``, ``models.hparams`` (as given, plain) and ``models.compile``."""

    name: str = "ResidualUNet3D"
    hparams: Mapping[str, Any] = field(default_factory=dict)
    compile: AutoBool = "auto"

    @property
    def num_levels(self) -> int:
        """Levels of the network (the length of an ``f_maps`` list, else ``num_levels``)."""
        f_maps = self.hparams.get("f_maps")
        if isinstance(f_maps, list | tuple):
            return len(f_maps)
        return int(self.hparams.get("num_levels", 4))


@dataclass(frozen=True)
class LossSettings:
    """``models.loss.*`` and ``models.use_forgiving_loss``."""

    alpha: float = 0.3
    beta: float = 0.7
    gamma: float = 0.75
    include_background: bool = True
    forgiving: bool = True


@dataclass(frozen=True)
class OptimiserSettings:
    """``models.lr``, ``models.optimizer.*``, ``models.scheduler.*``, ``models.ema_decay``."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    agc_clipping: float | None = None
    demon: bool = True
    use_gc: bool = False
    adanorm: bool = False
    nesterov: bool = False
    warmup_ratio: float = 0.05
    min_factor: float = 0.01
    ema_decay: float = 0.0


@dataclass(frozen=True)
class TrainerSettings:
    """The ``lightning`` keys a run reads itself (all of them go to the ``Trainer``)."""

    max_epochs: int = 1
    accumulate_grad_batches: int = 1
    limit_train_batches: int | float | None = None
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 1
    precision: Precision = Precision.TRUE32
    accelerator: Accelerator = Accelerator.AUTO
    enable_progress_bar: bool = True


@dataclass(frozen=True)
class FinetuneSettings:
    """``finetuning.*``: the head's classes and the gradual unfreezing."""

    out_channels: int | None = None
    mode: FinetuneMode = FinetuneMode.DECODER
    depth: int = -1
    unfreeze_frequency: int = 4


@dataclass(frozen=True)
class BudgetSettings:
    """``budget=`` in seconds (None: no budget) and ``plan=`` (a saved plan file)."""

    seconds: float | None = None
    plan: str | None = None


@dataclass(frozen=True)
class AugmentSettings:
    """``augmentation.backend`` and ``.device``; the transforms stay in :attr:`spec`."""

    backend: AugmentBackend = AugmentBackend.TORCH
    device: AugmentDevice = AugmentDevice.AUTO
    spec: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSettings:
    """Everything a ``train`` / ``finetune`` run reads, typed and checked.

    ``config`` is the composed config as plain values: what ``config.yaml`` records and
    checkpoints store (``models`` of it is the module's ``optim`` hyper-parameter).
    """

    kind: RunKind
    seed: int
    data: DataSettings
    network: NetworkSettings
    loss: LossSettings
    optimiser: OptimiserSettings
    trainer: TrainerSettings
    augment: AugmentSettings
    finetune: FinetuneSettings | None
    budget: BudgetSettings
    logger: LoggerKind = LoggerKind.TENSORBOARD
    surface_every: int = 0
    members: int = 1
    export_onnx: bool = True
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def plans(self) -> bool:
        """Whether ``budget=`` or ``plan=`` plans the run."""
        return self.budget.seconds is not None or self.budget.plan is not None


def steps_per_epoch(n_train: int, batch_size: int, limit: int | float | None = None) -> int:
    """Training batches of an epoch as Lightning counts them (``num_training_batches``):
    the train loader drops a last incomplete batch when there is more than one batch
    (:meth:`~hsftrain.data.datamodule.SegmentationDataModule.train_dataloader`), then
    ``lightning.limit_train_batches`` applies (an int: at most that many batches; a
    float: that fraction, rounded down, at least one)."""
    batches = n_train // batch_size if n_train > batch_size else 1
    if isinstance(limit, bool) or limit is None:
        return batches
    if isinstance(limit, int):
        return max(1, min(batches, limit))
    return max(1, int(batches * limit))


def optimiser_steps(batches: int, accumulate: int, epochs: int) -> int:
    """Optimiser steps of ``epochs`` epochs of ``batches`` batches: Lightning steps every
    ``accumulate`` batches and at the end of each epoch."""
    return math.ceil(batches / max(accumulate, 1)) * epochs

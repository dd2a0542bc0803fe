"""Up-front checks of a ``train`` / ``finetune`` configuration and of the network's depth.

:func:`validate_training` checks the type and range of every key a run uses before
anything is read or written, so that a zero batch size or a negative number of epochs
fails in a second with one line naming the key, not after minutes with a traceback.
:func:`check_depth` checks, once the data are known, that the network is not too deep
for the volumes (a 1-voxel deepest level has no normalisation statistics: NaN).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hsftrain.config.checks import (
    ABSENT,
    Checker,
    as_bool,
    as_float,
    as_int,
    check_output_dir,
    choice,
    get_value,
    invalid,
)
from hsftrain.core.errors import ConfigError
from hsftrain.data.nifti import header_info
from hsftrain.models import MODELS
from hsftrain.models.blocks import LAYER_LETTERS, feature_sizes

PRECISIONS = frozenset(
    {"32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true", "64-true"}
    | {"64", "transformer-engine", "transformer-engine-float16"}
)
ACCELERATORS = frozenset({"auto", "cpu", "gpu", "cuda", "mps", "tpu"})
LOGGERS = ("tensorboard", "csv", "wandb")


def parse_budget(value: Any) -> float:
    """Seconds from ``30m``, ``2h``, ``1h30m``, ``90s`` or a number of seconds.

    Raises:
        ConfigError: anything else, or a budget under one minute.
    """
    text = str(value).strip().lower()
    seconds: float | None = None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
        if parts and re.fullmatch(r"(\s*\d+(?:\.\d+)?\s*[hms])+\s*", text):
            unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
            seconds = sum(float(n) * unit[u] for n, u in parts)
    if seconds is None:
        raise ConfigError(f"budget={value}: give a duration such as 30m, 2h, 1h30m or 900s")
    if seconds < 60:
        raise ConfigError(f"budget={value}: at least 1m (the plan itself takes ~30 s)")
    return seconds


def _shape3(key: str, value: Any) -> list[int]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise invalid(key, value, "null or three sizes [X, Y, Z] in voxels")
    return [as_int(f"{key}[{i}]", v, 1) for i, v in enumerate(value)]


def _f_maps(key: str, value: Any) -> int | list[int]:
    if isinstance(value, list | tuple):
        if not value:
            raise invalid(key, value, "an integer >= 1 or a non-empty list of them")
        return [as_int(f"{key}[{i}]", v, 1) for i, v in enumerate(value)]
    return as_int(key, value, 1)


def _layer_order(key: str, value: Any) -> str:
    order = str(value)
    if not isinstance(value, str) or order.count("c") != 1 or set(order) - set(LAYER_LETTERS):
        raise invalid(key, value, f"exactly one 'c' plus letters from {LAYER_LETTERS!r}")
    return order


def _kernel(key: str, value: Any) -> int:
    k = as_int(key, value, 1)
    if k % 2 == 0:
        raise invalid(key, value, "an odd integer (1, 3, 5, ...)")
    return k


def _betas(key: str, value: Any) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise invalid(key, value, "two numbers [beta1, beta2] in [0, 1)")
    return [as_float(f"{key}[{i}]", v, 0, 1, high_open=True) for i, v in enumerate(value)]


def _limit(key: str, value: Any) -> float:
    if isinstance(value, float):  # Lightning: a float is a fraction of the batches
        return as_float(key, value, 0, 1, low_open=True, what=" (a fraction of the batches)")
    return as_int(key, value, 1, " (a number of batches) or a fraction in (0, 1]")


def _devices(key: str, value: Any) -> Any:
    if value == "auto" or isinstance(value, list):
        return value
    if as_int(key, value, -1, ' (-1: all) or "auto" or a list of device indices') == 0:
        raise invalid(key, value, 'at least 1, -1 (all), "auto" or a list of device indices')
    return value


def _budget(key: str, value: Any) -> float:
    return parse_budget(value)


def _auto_or_bool(key: str, value: Any) -> str | bool:
    return "auto" if str(value) == "auto" else as_bool(key, value)


def _probability(key: str, value: Any) -> float:
    return as_float(key, value, 0, 1)


def validate_training(cfg: DictConfig, finetune: bool = False) -> None:
    """Check every key a ``train`` / ``finetune`` run uses: type and range.

    Keys absent from ``cfg`` are skipped (their code defaults apply). Nothing is read or
    written.

    Raises:
        ConfigError: the first invalid key, with its value and what it must be.
    """
    c = Checker(cfg)
    c("seed", lambda k, v: as_int(k, v))
    c("run_name", lambda k, v: _run_name(k, v), optional=True)
    c("export_onnx", as_bool)
    c("budget", _budget, optional=True)
    # datasets
    c("datasets.batch_size", lambda k, v: as_int(k, v, 1, " (images per training step)"))
    c("datasets.num_workers", lambda k, v: as_int(k, v, 0))
    c("datasets.pin_memory", _auto_or_bool)
    c("datasets.foreground_ratio", _probability, optional=True)
    c("datasets.cache_dtype", choice(("float16", "float32")), optional=True)
    c("datasets.nonfinite", choice(("error", "clean")), optional=True)
    c("datasets.train_ratio", lambda k, v: as_float(k, v, 0, 1, low_open=True, high_open=True))
    c("datasets.replace", as_bool)
    c("datasets.k_sample", lambda k, v: as_int(k, v, 1), optional=True)
    c("datasets.train_on_all", as_bool)
    c("datasets.patch_size", _shape3, optional=True)
    # lightning
    c("lightning.max_epochs", lambda k, v: as_int(k, v, 1, " (epochs to train)"))
    c("lightning.min_epochs", lambda k, v: as_int(k, v, 0), optional=True)
    c("lightning.accumulate_grad_batches", lambda k, v: as_int(k, v, 1))
    c("lightning.check_val_every_n_epoch", lambda k, v: as_int(k, v, 1), optional=True)
    c("lightning.log_every_n_steps", lambda k, v: as_int(k, v, 1), optional=True)
    c("lightning.limit_train_batches", _limit, optional=True)
    c("lightning.limit_val_batches", _limit, optional=True)
    c("lightning.precision", choice(sorted(PRECISIONS)), optional=True)
    c("lightning.accelerator", choice(sorted(ACCELERATORS)), optional=True)
    c("lightning.devices", _devices, optional=True)
    c("lightning.enable_progress_bar", as_bool, optional=True)
    c("lightning.deterministic", lambda k, v: v if v == "warn" else as_bool(k, v), optional=True)
    c("lightning.gradient_clip_val", lambda k, v: as_float(k, v, 0), optional=True)
    # models
    c("models.name", choice(sorted(MODELS)))
    c("models.lr", lambda k, v: as_float(k, v, 0, low_open=True, what=" (learning rate)"))
    c("models.use_forgiving_loss", as_bool)
    c("models.ema_decay", lambda k, v: as_float(k, v, 0, 1, high_open=True), optional=True)
    c("models.compile", _auto_or_bool, optional=True)
    c("models.hparams.in_channels", _in_channels, optional=True)
    c("models.hparams.out_channels", lambda k, v: as_int(k, v, 2), optional=True)
    c("models.hparams.f_maps", _f_maps)
    c("models.hparams.num_levels", lambda k, v: as_int(k, v, 1))
    c("models.hparams.layer_order", _layer_order)
    c("models.hparams.conv_kernel_size", _kernel)
    c("models.hparams.use_attention", as_bool)
    c("models.hparams.skip", choice(("sum", "concat")))
    if c("models.hparams.deep_supervision", as_bool, optional=True) and not cfg.get("budget"):
        f_maps = get_value(cfg, "models.hparams.f_maps")
        if len(feature_sizes(f_maps, int(get_value(cfg, "models.hparams.num_levels")))) < 3:
            raise ConfigError(
                "models.hparams.deep_supervision=true needs at least 3 levels "
                "(models.hparams.num_levels): set 3 or more, or deep_supervision=false"
            )
    for name in ("alpha", "beta"):
        c(f"models.loss.{name}", lambda k, v: as_float(k, v, 0))
    c("models.loss.gamma", lambda k, v: as_float(k, v, 0, low_open=True))
    c("models.loss.include_background", as_bool)
    c("models.optimizer.betas", _betas)
    c("models.optimizer.weight_decay", lambda k, v: as_float(k, v, 0))
    c("models.optimizer.agc_clipping", lambda k, v: as_float(k, v, 0), optional=True)
    for name in ("demon", "use_gc", "adanorm", "nesterov"):
        c(f"models.optimizer.{name}", as_bool)
    c("models.scheduler.warmup_ratio", _probability)
    c("models.scheduler.min_factor", _probability)
    # the rest of the run
    c("validation.surface_every", lambda k, v: as_int(k, v, -1, " (-1: never, 0: last epoch)"))
    c("ensemble.members", lambda k, v: as_int(k, v, 1))
    c("logger.name", choice(LOGGERS))
    c("augmentation.backend", choice(("torch", "torchio")), optional=True)
    c("augmentation.device", choice(("auto", "cpu", "cuda")), optional=True)
    for name in ("flip", "motion", "blur", "noise", "gamma", "affine", "elastic"):
        c(f"augmentation.{name}.p", _probability, optional=True)
    if finetune:
        c("finetuning.out_channels", lambda k, v: as_int(k, v, 2), optional=True)
        c("finetuning.mode", choice(("encoder", "decoder")))
        c("finetuning.depth", lambda k, v: as_int(k, v, -1, " (-1: every level)"))
        c(
            "finetuning.unfreeze_frequency",
            lambda k, v: as_int(k, v, 0, " (epochs; 0: all at once)"),
        )
    for key in ("split_file",):
        value = get_value(cfg, key)
        if value not in (ABSENT, None) and not Path(str(value)).expanduser().is_file():
            raise ConfigError(f"`{key}`={value}: no such file (a split.json of an earlier run)")
    if not cfg.get("resume"):
        output = get_value(cfg, "datasets.output_path")
        if output is not ABSENT:
            check_output_dir(output if output is not None else ".", "datasets.output_path")


def _run_name(key: str, value: Any) -> str:
    name = str(value)
    if not name.strip() or Path(name).is_absolute() or ".." in Path(name).parts:
        raise invalid(
            key, value, "a folder name under datasets.output_path (no '..', not absolute)"
        )
    return name


def _in_channels(key: str, value: Any) -> int:
    if as_int(key, value, 1) != 1:
        raise invalid(key, value, "1: hsftrain trains on one image (one channel) per subject")
    return 1


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

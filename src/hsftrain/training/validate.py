"""Up-front checks of a ``train`` / ``finetune`` configuration, returned as typed settings.

:func:`validate_training` checks the type and range of every key a run uses before
anything is read or written, so that a zero batch size or a negative number of epochs
fails in a second with one line naming the key, not after minutes with a traceback, and
returns the values it parsed as a :class:`~hsftrain.training.settings.TrainingSettings`.
The network's depth against the data is checked once the data are known
(:mod:`hsftrain.training.depth`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hsftrain.config.checks import (
    Checker,
    as_bool,
    as_float,
    as_int,
    check_output_dir,
    choice,
    invalid,
)
from hsftrain.config.keys import ABSENT, get_value, parse_devices
from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError
from hsftrain.models import MODELS
from hsftrain.models.blocks import LAYER_LETTERS, feature_sizes
from hsftrain.training.settings import (
    Accelerator,
    AugmentBackend,
    AugmentDevice,
    AugmentSettings,
    BudgetSettings,
    CacheDtype,
    DataSettings,
    FinetuneMode,
    FinetuneSettings,
    LoggerKind,
    LossSettings,
    NetworkSettings,
    NonFinite,
    OptimiserSettings,
    Precision,
    RunKind,
    TrainerSettings,
    TrainingSettings,
)

PRECISIONS = frozenset(Precision)
ACCELERATORS = frozenset(Accelerator)
LOGGERS = tuple(LoggerKind)


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


def _lightning_devices(key: str, value: Any) -> Any:
    """``lightning.devices`` (:func:`~hsftrain.config.keys.parse_devices`): auto, a count
    (-1: all) or device ids; returned as given (Lightning reads it)."""
    try:
        devices = parse_devices(value)
    except ValueError:
        devices = None
    if devices is None or devices.count is not None:
        count = as_int(key, value, -1, ' (-1: all) or "auto" or a list of device indices')
        if count == 0:
            raise invalid(key, value, 'at least 1, -1 (all), "auto" or a list of device indices')
    return value


def _budget(key: str, value: Any) -> float:
    return parse_budget(value)


def _auto_or_bool(key: str, value: Any) -> str | bool:
    return "auto" if str(value) == "auto" else as_bool(key, value)


def _probability(key: str, value: Any) -> float:
    return as_float(key, value, 0, 1)


def validate_training(cfg: DictConfig, finetune: bool = False) -> TrainingSettings:
    """Check every key a ``train`` / ``finetune`` run uses (type and range) and return
    them typed, once, as :class:`~hsftrain.training.settings.TrainingSettings`.

    Keys absent from ``cfg`` are skipped (their code defaults apply). Nothing is read or
    written.

    Raises:
        ConfigError: the first invalid key, with its value and what it must be.
    """
    c = Checker(cfg)
    seed = c("seed", lambda k, v: as_int(k, v))
    c("run_name", lambda k, v: _run_name(k, v), optional=True)
    export_onnx = c("export_onnx", as_bool)
    seconds = c("budget", _budget, optional=True)
    data = _data_settings(c)
    trainer = _trainer_settings(c)
    network = _network_settings(c, cfg)
    loss, optimiser = _loss_settings(c), _optimiser_settings(c)
    surface_every = c(
        "validation.surface_every", lambda k, v: as_int(k, v, -1, " (-1: never, 0: last epoch)")
    )
    members = c("ensemble.members", lambda k, v: as_int(k, v, 1))
    logger = c("logger.name", choice(LOGGERS))
    augment = _augment_settings(c, cfg)
    tuning = _finetune_settings(c) if finetune else None
    _check_files(cfg)
    return TrainingSettings(
        kind=RunKind.FINETUNE if finetune else RunKind.TRAIN,
        seed=_or(seed, 0),
        data=data,
        network=network,
        loss=loss,
        optimiser=optimiser,
        trainer=trainer,
        augment=augment,
        finetune=tuning,
        budget=BudgetSettings(seconds, _plan(cfg)),
        logger=LoggerKind(_or(logger, LoggerKind.TENSORBOARD)),
        surface_every=_or(surface_every, 0),
        members=_or(members, 1),
        export_onnx=_or(export_onnx, True),
        config=plain(cfg),
    )


def _or(value: Any, default: Any) -> Any:
    """``value``, or ``default`` for a key the config does not have (or has null)."""
    return default if value is None else value


def _given(values: dict[str, Any]) -> dict[str, Any]:
    """The values of the keys the config has (absent ones keep the settings' defaults)."""
    return {k: v for k, v in values.items() if v is not None}


def _plan(cfg: DictConfig) -> str | None:
    value = get_value(cfg, "plan")
    return None if value in (ABSENT, None) or not value else str(value)


def _data_settings(c: Checker) -> DataSettings:
    """``datasets.*``."""
    return DataSettings(
        **_given(
            {
                "batch_size": c(
                    "datasets.batch_size",
                    lambda k, v: as_int(k, v, 1, " (images per training step)"),
                ),
                "num_workers": c("datasets.num_workers", lambda k, v: as_int(k, v, 0)),
                "pin_memory": c("datasets.pin_memory", _auto_or_bool),
                "foreground_ratio": c("datasets.foreground_ratio", _probability, optional=True),
                "cache_dtype": _enum(
                    CacheDtype, c("datasets.cache_dtype", choice(CacheDtype), optional=True)
                ),
                "nonfinite": _enum(
                    NonFinite, c("datasets.nonfinite", choice(NonFinite), optional=True)
                ),
                "train_ratio": c(
                    "datasets.train_ratio",
                    lambda k, v: as_float(k, v, 0, 1, low_open=True, high_open=True),
                ),
                "replace": c("datasets.replace", as_bool),
                "k_sample": c("datasets.k_sample", lambda k, v: as_int(k, v, 1), optional=True),
                "train_on_all": c("datasets.train_on_all", as_bool),
                "patch_size": _tuple(c("datasets.patch_size", _shape3, optional=True)),
            }
        )
    )


def _trainer_settings(c: Checker) -> TrainerSettings:
    """``lightning.*`` (every key is checked; those a run reads itself are kept)."""
    values = {
        "max_epochs": c("lightning.max_epochs", lambda k, v: as_int(k, v, 1, " (epochs to train)"))
    }
    c("lightning.min_epochs", lambda k, v: as_int(k, v, 0), optional=True)
    values["accumulate_grad_batches"] = c(
        "lightning.accumulate_grad_batches", lambda k, v: as_int(k, v, 1)
    )
    for name in ("check_val_every_n_epoch", "log_every_n_steps"):
        values[name] = c(f"lightning.{name}", lambda k, v: as_int(k, v, 1), optional=True)
    values["limit_train_batches"] = c("lightning.limit_train_batches", _limit, optional=True)
    c("lightning.limit_val_batches", _limit, optional=True)
    precision = c("lightning.precision", choice(sorted(PRECISIONS)), optional=True)
    accelerator = c("lightning.accelerator", choice(sorted(ACCELERATORS)), optional=True)
    c("lightning.devices", _lightning_devices, optional=True)
    values["enable_progress_bar"] = c("lightning.enable_progress_bar", as_bool, optional=True)
    c("lightning.deterministic", lambda k, v: v if v == "warn" else as_bool(k, v), optional=True)
    c("lightning.gradient_clip_val", lambda k, v: as_float(k, v, 0), optional=True)
    values["precision"] = _enum(Precision, precision)
    values["accelerator"] = _enum(Accelerator, accelerator)
    return TrainerSettings(**_given(values))


def _network_settings(c: Checker, cfg: DictConfig) -> NetworkSettings:
    """``models.name``, ``models.hparams.*`` and ``models.compile`` (``models.lr`` and
    ``models.use_forgiving_loss`` are checked here too, in the order of the config)."""
    name = c("models.name", choice(sorted(MODELS)))
    c("models.lr", lambda k, v: as_float(k, v, 0, low_open=True, what=" (learning rate)"))
    c("models.use_forgiving_loss", as_bool)
    c("models.ema_decay", lambda k, v: as_float(k, v, 0, 1, high_open=True), optional=True)
    compile_ = c("models.compile", _auto_or_bool, optional=True)
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
    hparams = get_value(cfg, "models.hparams")
    return NetworkSettings(
        **_given(
            {
                "name": name,
                "hparams": dict(hparams) if isinstance(hparams, dict) else None,
                "compile": compile_,
            }
        )
    )


def _loss_settings(c: Checker) -> LossSettings:
    """``models.loss.*`` (``use_forgiving_loss`` was checked with the network's keys)."""
    values = {
        name: c(f"models.loss.{name}", lambda k, v: as_float(k, v, 0)) for name in ("alpha", "beta")
    }
    values["gamma"] = c("models.loss.gamma", lambda k, v: as_float(k, v, 0, low_open=True))
    values["include_background"] = c("models.loss.include_background", as_bool)
    values["forgiving"] = c("models.use_forgiving_loss", as_bool)
    return LossSettings(**_given(values))


def _optimiser_settings(c: Checker) -> OptimiserSettings:
    """``models.optimizer.*``, ``models.scheduler.*``, ``models.lr`` and ``models.ema_decay``."""
    betas = c("models.optimizer.betas", _betas)
    values: dict[str, Any] = {
        "betas": tuple(betas) if betas is not None else None,
        "weight_decay": c("models.optimizer.weight_decay", lambda k, v: as_float(k, v, 0)),
        "agc_clipping": c(
            "models.optimizer.agc_clipping", lambda k, v: as_float(k, v, 0), optional=True
        ),
    }
    for name in ("demon", "use_gc", "adanorm", "nesterov"):
        values[name] = c(f"models.optimizer.{name}", as_bool)
    values["warmup_ratio"] = c("models.scheduler.warmup_ratio", _probability)
    values["min_factor"] = c("models.scheduler.min_factor", _probability)
    values["lr"] = c("models.lr", lambda k, v: as_float(k, v, 0, low_open=True))
    values["ema_decay"] = c(
        "models.ema_decay", lambda k, v: as_float(k, v, 0, 1, high_open=True), optional=True
    )
    return OptimiserSettings(**_given(values))


def _augment_settings(c: Checker, cfg: DictConfig) -> AugmentSettings:
    """``augmentation.backend``, ``.device`` and each transform's probability."""
    backend = c("augmentation.backend", choice(AugmentBackend), optional=True)
    device = c("augmentation.device", choice(AugmentDevice), optional=True)
    for name in ("flip", "motion", "blur", "noise", "gamma", "affine", "elastic"):
        c(f"augmentation.{name}.p", _probability, optional=True)
    spec = get_value(cfg, "augmentation")
    return AugmentSettings(
        **_given(
            {
                "backend": _enum(AugmentBackend, backend),
                "device": _enum(AugmentDevice, device),
                "spec": dict(spec) if isinstance(spec, dict) else None,
            }
        )
    )


def _finetune_settings(c: Checker) -> FinetuneSettings:
    """``finetuning.*`` (fine-tuning only)."""
    values = {
        "out_channels": c("finetuning.out_channels", lambda k, v: as_int(k, v, 2), optional=True),
        "mode": _enum(FinetuneMode, c("finetuning.mode", choice(FinetuneMode))),
        "depth": c("finetuning.depth", lambda k, v: as_int(k, v, -1, " (-1: every level)")),
        "unfreeze_frequency": c(
            "finetuning.unfreeze_frequency",
            lambda k, v: as_int(k, v, 0, " (epochs; 0: all at once)"),
        ),
    }
    return FinetuneSettings(**_given(values))


def _check_files(cfg: DictConfig) -> None:
    """``split_file`` exists; ``datasets.output_path`` can be written (a new run)."""
    for key in ("split_file",):
        value = get_value(cfg, key)
        if value not in (ABSENT, None) and not Path(str(value)).expanduser().is_file():
            raise ConfigError(f"`{key}`={value}: no such file (a split.json of an earlier run)")
    if not cfg.get("resume"):
        output = get_value(cfg, "datasets.output_path")
        if output is not ABSENT:
            check_output_dir(output if output is not None else ".", "datasets.output_path")


def _enum(kind: Any, value: Any) -> Any:
    """``value`` as the :class:`enum.StrEnum` ``kind`` (None stays None)."""
    return None if value is None else kind(value)


def _tuple(value: Any) -> Any:
    return None if value is None else tuple(value)


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

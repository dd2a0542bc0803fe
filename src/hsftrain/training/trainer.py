"""The Lightning ``Trainer`` of a run: its arguments, its logger, and the warnings and
log lines of Lightning that say nothing actionable to a user of this tool."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError

log = logging.getLogger(__name__)

#: Warnings that say nothing actionable to a user of this tool.
QUIET = (
    ".*LeafSpec.*",
    ".*litlogger.*",
    ".*maximum displacement is larger than the coarse grid.*",
    ".*does not have many workers.*",
    ".*is smaller than the logging interval.*",
    ".*exists and is not empty.*",  # a resumed run's checkpoints folder
    # a run stopped mid-epoch resumes there: its patches are random draws anyway
    ".*checkpoint that ended before the epoch ended.*",
)


#: Lightning start-up lines that say nothing to a user: its cloud logger advertisement,
#: accelerators that are absent (a GPU present but unused is still said), and how it
#: counts the steps of an epoch.
NOISE = (
    "litlogger",
    "GPU available: False",
    "TPU available: False",
    "HPU available: False",
    "Loading `train_dataloader` to estimate number of stepping batches",
)


class _DropAdverts(logging.Filter):
    """Drops the Lightning lines of :data:`NOISE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in NOISE)


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


class _DropWeightsOnly(logging.Filter):
    """Lightning's line on saving a checkpoint without ``weights_only`` (a ``ddp_spawn``
    run's hand-over, a stop's save): every checkpoint of a run is a full one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`weights_only` was not set" not in record.getMessage()


logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(
    _DropWeightsOnly()
)


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``lightning.Trainer`` arguments from the ``lightning`` group (nulls dropped), with
    what this machine allows: 16-bit precision on a GPU, or bf16 on a CPU that computes it
    natively (AMX / AVX-512 BF16), cudnn benchmarking on a GPU when unset."""
    kwargs = {k: v for k, v in plain(cfg.lightning).items() if v is not None}
    asked = str(kwargs.get("precision", "32-true"))
    kwargs["precision"] = run_precision(cfg)
    if kwargs["precision"] != asked:
        log.info("precision %s needs a GPU here: training on CPU in 32-true instead", asked)
    on_cpu = _on_cpu(cfg)
    if not on_cpu and kwargs.get("benchmark") is None:
        kwargs["benchmark"] = True  # fixed patch shapes: let cudnn pick its fastest kernels
    if on_cpu and int(cfg.datasets.get("batch_size", 1)) == 1:
        log.warning(
            "datasets.batch_size=1 on CPU: PyTorch runs small single-volume batches through "
            "its slow 3D convolution; datasets.batch_size=2 trains about 3x faster here"
        )
    return kwargs


def _on_cpu(cfg: DictConfig) -> bool:
    return cfg.lightning.get("accelerator") == "cpu" or not torch.cuda.is_available()


def run_precision(cfg: DictConfig) -> str:
    """The precision training runs in: ``lightning.precision``, except 16-bit on a CPU,
    which becomes ``32-true`` unless it is bf16 and the CPU computes bf16 natively."""
    precision = str(cfg.lightning.get("precision") or "32-true")
    if "16" in precision and _on_cpu(cfg) and not (precision.startswith("bf16") and cpu_bf16()):
        return "32-true"
    return precision


def cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX-512 BF16): there, bf16
    autocast makes 3D convolutions faster; elsewhere it is emulated and slower."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check is not None and check()) or (amx is not None and amx()))


def log_version(run_dir: Path) -> str:
    """``logs`` for a new run; ``logs_resumeN`` when resuming, so earlier logs are kept."""
    if not (run_dir / "logs").exists():
        return "logs"
    k = 1
    while (run_dir / f"logs_resume{k}").exists():
        k += 1
    return f"logs_resume{k}"


def make_logger(cfg: DictConfig, run_dir: Path) -> Logger:
    """The Lightning logger of the ``logger`` group, writing into ``run_dir``.

    Raises:
        ConfigError: unknown ``logger.name``, or ``wandb`` without its optional extra.
    """
    kind = str(cfg.logger.get("name", "tensorboard"))
    version = log_version(run_dir)
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(str(run_dir), name="", version=version, default_hp_metric=False)
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(run_dir), name="", version=version)
    if kind == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise ConfigError(
                "logger=wandb needs the optional extra: pip install 'hsftrain[wandb]'"
            ) from err
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(
            project=str(cfg.logger.get("project", "hsftrain")),
            save_dir=str(run_dir),
            offline=bool(cfg.logger.get("offline", True)),
        )
    raise ConfigError(f"logger.name={kind!r}: use tensorboard, csv or wandb")

"""``train`` and ``finetune``: one code path from a composed config to a trained model.

``run(cfg, finetune)`` discovers the data, splits it (bagging when ``replace``), builds the
model (from a pretrained checkpoint when fine-tuning), trains with Lightning, and exports
the best checkpoint to ONNX. Everything a run needs to be reproduced or resumed is in its
run directory: ``config.yaml``, ``split.json``, ``checkpoints/``, logs and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from hsftrain.config import ConfigError
from hsftrain.data.datamodule import SegmentationDataModule, build_datamodule, prepare_split
from hsftrain.data.discovery import Discovery, discover
from hsftrain.data.labels import LabelError, group_table
from hsftrain.data.labels import class_names as names_from_table
from hsftrain.data.splits import Split, crossing_groups, make_split
from hsftrain.export.pruning import compression_callbacks
from hsftrain.finite import check_finite_state
from hsftrain.logs import run_log
from hsftrain.training.callbacks import EpochTable, OnTrainStart, StepProgress
from hsftrain.training.checkpoint import ModelInfo, read_checkpoint
from hsftrain.training.distributed import (
    compile_enabled,
    is_rank_zero,
    publish_run_name,
    shared_run_name,
)
from hsftrain.training.finetuning import GradualUnfreezing
from hsftrain.training.guards import FiniteGuard, Preemption, SignalState, catch_signals
from hsftrain.training.module import SegmentationModule
from hsftrain.validate import check_network_fits, validate_training

log = logging.getLogger(__name__)

#: Warnings that say nothing actionable to a user of this tool.
_QUIET = (
    ".*LeafSpec.*",
    ".*litlogger.*",
    ".*maximum displacement is larger than the coarse grid.*",
    ".*does not have many workers.*",
    ".*is smaller than the logging interval.*",
    ".*exists and is not empty.*",  # a resumed run's checkpoints folder
)


class _DropAdverts(logging.Filter):
    """Lightning's advertisement for its cloud logger is noise in a research tool."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train from scratch (an ensemble when ``ensemble.members > 1``). Returns the final
    validation metrics (per member for an ensemble)."""
    return _dispatch(cfg, finetune=False)


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune ``finetuning.pretrained``. Returns the final validation metrics."""
    return _dispatch(cfg, finetune=True)


def _dispatch(cfg: DictConfig, finetune: bool) -> dict[str, Any]:
    if int(OmegaConf.select(cfg, "ensemble.members", default=1) or 1) > 1:
        from hsftrain.training.ensemble import train_ensemble

        return train_ensemble(cfg, finetune=finetune)
    return run(cfg, finetune=finetune)


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """Run directory and the checkpoint to resume from (if ``resume`` is set).

    Raises:
        FileNotFoundError: ``resume`` names nothing usable.
    """
    if cfg.get("resume"):
        target = Path(str(cfg.resume)).expanduser()
        if target.is_dir():
            ckpt = target / "checkpoints" / "last.ckpt"
            if not ckpt.is_file():
                raise FileNotFoundError(f"resume={target}: no checkpoints/last.ckpt in it")
            return target, ckpt
        if target.is_file():
            return target.parent.parent, target
        raise FileNotFoundError(f"resume={target}: no such checkpoint file or run directory")
    name = cfg.get("run_name") or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(str(cfg.datasets.output_path)).expanduser() / str(name)
    if (run_dir / "checkpoints").exists() and is_rank_zero():
        raise FileExistsError(
            f"{run_dir} already holds a run: choose another run_name, or continue it with "
            f"resume={run_dir}"
        )
    return run_dir, None


def model_classes(cfg: DictConfig, found: Discovery, out_channels: int | None) -> list[str]:
    """The model's class names: ``models.labels_names``, or the finest dataset's names.

    Raises:
        ConfigError: more label values in the data than ``out_channels`` allows.
    """
    if cfg.models.get("labels_names"):
        table = {int(k): str(v) for k, v in cfg.models.labels_names.items()}
        return names_from_table(table, out_channels)
    specs = {s.index: s for s in found.datasets}
    finest = max(
        found.dataset_classes,
        key=lambda d: (specs[d].ca_type == "1/2/3", len(found.dataset_classes[d])),
    )
    names = list(found.dataset_classes[finest])
    if out_channels is not None:
        if out_channels < len(names):
            raise ConfigError(
                f"the data has {len(names)} classes (background included) but out_channels="
                f"{out_channels}: raise models.hparams.out_channels / finetuning.out_channels"
            )
        names += [f"label_{i}" for i in range(len(names), out_channels)]
    return names


def _total_steps(n_train: int, cfg: DictConfig) -> int:
    batches = math.ceil(n_train / int(cfg.datasets.batch_size))
    limit = cfg.lightning.get("limit_train_batches")
    if isinstance(limit, int) and limit > 1:
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = max(1, int(batches * limit))
    steps = math.ceil(batches / int(cfg.lightning.get("accumulate_grad_batches") or 1))
    return steps * int(cfg.lightning.max_epochs)


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    kwargs = {
        k: v
        for k, v in OmegaConf.to_container(cfg.lightning, resolve=True).items()
        if v is not None
    }
    precision = str(kwargs.get("precision", "32-true"))
    if ("16" in precision) and not torch.cuda.is_available():
        log.info("precision %s needs a GPU here: training on CPU in 32-true instead", precision)
        kwargs["precision"] = "32-true"
    on_cpu = kwargs.get("accelerator") == "cpu" or not torch.cuda.is_available()
    if not on_cpu and kwargs.get("benchmark") is None:
        kwargs["benchmark"] = True  # fixed patch shapes: let cudnn pick its fastest kernels
    if on_cpu and int(cfg.datasets.get("batch_size", 1)) == 1:
        log.warning(
            "datasets.batch_size=1 on CPU: PyTorch runs small single-volume batches through "
            "its slow 3D convolution; datasets.batch_size=2 trains about 3x faster here"
        )
    return kwargs


def _log_version(run_dir: Path) -> str:
    """``logs`` for a new run; ``logs_resumeN`` when resuming, so earlier logs are kept."""
    if not (run_dir / "logs").exists():
        return "logs"
    k = 1
    while (run_dir / f"logs_resume{k}").exists():
        k += 1
    return f"logs_resume{k}"


def _logger(cfg: DictConfig, run_dir: Path) -> Any:
    kind = str(cfg.logger.get("name", "tensorboard"))
    version = _log_version(run_dir)
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


def _pretrained(cfg: DictConfig) -> Path:
    spec = cfg.finetuning.get("pretrained")
    if spec is None:
        raise ConfigError(
            "finetuning.pretrained must be set: a checkpoint path, or {url: ..., xxh3_64: ...}"
        )
    from hsftrain.hub.fetch import fetch

    cache = cfg.finetuning.get("cache_dir")
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    return fetch(spec, Path(str(cache)) if cache else None)


#: A pretrained checkpoint: its path, network state dict and model description.
Pretrained = tuple[Path, dict[str, torch.Tensor], ModelInfo]


def _read_pretrained(cfg: DictConfig) -> Pretrained:
    path = _pretrained(cfg)
    # an hsf_train (HSF) checkpoint stores no architecture: models=hsf_arunet settings apply
    state, info = read_checkpoint(path, cfg.models)
    check_finite_state(state, path)  # a diverged model cannot be a starting point
    return path, state, info


def finetune_classes(
    cfg: DictConfig, found: Discovery, out_channels: int | None, pretrained: list[str]
) -> list[str]:
    """Class names of a fine-tuned model (and so whether its head is kept).

    The pretrained classes (e.g. HSF's background, DG, CA1, CA2, CA3, SUB) are kept when
    ``finetuning.out_channels`` is null or their number, ``models.labels_names`` is unset,
    and either the forgiving loss maps every dataset onto them (labels named like the
    pretrained classes, at any CA granularity) or, without it, the data has that many
    classes. Otherwise: the data's classes, as for training (see :func:`model_classes`).

    Raises:
        ConfigError: more label values in the data than ``out_channels`` allows.
    """
    keep_count = out_channels is None or out_channels == len(pretrained)
    if keep_count and not cfg.models.get("labels_names"):
        if bool(cfg.models.get("use_forgiving_loss", True)):
            ca = {s.index: s.ca_type for s in found.datasets}
            try:
                for d, names in found.dataset_classes.items():
                    group_table(pretrained, names, ca[d])
            except LabelError:
                pass
            else:
                return list(pretrained)
    names = model_classes(cfg, found, out_channels)
    if out_channels is None and len(names) == len(pretrained):
        return list(pretrained)
    return names


def build_module(
    cfg: DictConfig, found: Discovery, total_steps: int, pretrained: Pretrained | None = None
) -> SegmentationModule:
    """The LightningModule for this run; from ``pretrained`` (weights, new head when the
    classes differ) when fine-tuning."""
    optim = OmegaConf.to_container(cfg.models, resolve=True)

    def make(name: str, hparams: dict[str, Any], names: list[str]) -> SegmentationModule:
        return SegmentationModule(
            name,
            hparams,
            names,
            found.dataset_classes,
            {s.index: s.ca_type for s in found.datasets},
            optim,
            total_steps,
            config=OmegaConf.to_container(cfg, resolve=True),
            surface_every=int(cfg.get("validation", {}).get("surface_every", 0)),
            compile=compile_enabled(
                cfg.models.get("compile", "auto"), cfg.lightning.get("accelerator", "auto")
            ),
        )

    if pretrained is None:
        hparams = dict(optim["hparams"])
        names = model_classes(cfg, found, hparams.get("out_channels"))
        hparams["out_channels"] = len(names)
        return make(str(cfg.models.name), hparams, names)
    path, state, info = pretrained
    out = cfg.finetuning.get("out_channels")
    names = finetune_classes(cfg, found, int(out) if out else None, info.class_names)
    hparams = {**info.hparams, "out_channels": len(info.class_names)}
    module = make(info.name, hparams, names)
    module.net.load_state_dict(state)
    if len(names) != len(info.class_names):
        log.info(
            "pretrained head has %d classes, data needs %d: new output head",
            len(info.class_names),
            len(names),
        )
        module.net.replace_head(len(names))
        module.net.to(memory_format=torch.channels_last_3d)
        module.hparams["model_hparams"]["out_channels"] = len(names)
    log.info("fine-tuning from %s (%s)", path, info.name)
    return module


def run(cfg: DictConfig, finetune: bool = False) -> dict[str, float]:
    """Train (or fine-tune) as configured, logging into ``<run>/train.log``. Returns the
    last validation metrics.

    A resume that fails before training starts (e.g. a checkpoint that does not load)
    leaves the run directory as it was (only ``train.log`` records the attempt).

    Raises:
        ConfigError, DataError, FileNotFoundError: with the key or file to fix.
    """
    validate_training(cfg, finetune)  # before anything is read or written
    if not cfg.get("resume") and not cfg.get("run_name"):  # one name for the whole run
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.run_name = shared_run_name() or time.strftime("%Y%m%d-%H%M%S")
        publish_run_name(str(cfg.run_name))  # DDP processes launched later use it too
    run_dir, resume_ckpt = resolve_run_dir(cfg)
    before = set(run_dir.iterdir()) if resume_ckpt is not None else set()
    stamp = resume_ckpt.stat().st_mtime_ns if resume_ckpt is not None else 0
    with run_log(run_dir) as log_file:
        try:
            return _run(cfg, finetune)
        except BaseException as err:
            if resume_ckpt is None or resume_ckpt.stat().st_mtime_ns != stamp:
                raise
            for path in set(run_dir.iterdir()) - before - {log_file}:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            if isinstance(err, RuntimeError) and "state_dict" in str(err):
                raise ConfigError(
                    f"resume={cfg.resume}: {resume_ckpt} does not fit the model of "
                    f"{run_dir / 'config.yaml'} ({str(err).splitlines()[0].strip()}); resume "
                    "a checkpoint of this run, or start a new run"
                ) from err
            raise


def _run(cfg: DictConfig, finetune: bool = False) -> dict[str, float]:
    """Train (or fine-tune) as configured. Returns the last validation metrics.

    Raises:
        ConfigError, DataError, FileNotFoundError: with the key or file to fix.
    """
    started = time.monotonic()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    # the pretrained model first (fetched and verified): a wrong spec writes no run directory
    pretrained = _read_pretrained(cfg) if finetune else None
    run_dir, resume_ckpt = resolve_run_dir(cfg)
    found = discover(cfg.datasets)
    hparams = (
        pretrained[2].hparams
        if pretrained
        else OmegaConf.to_container(cfg.models.hparams, resolve=True)
    )
    check_network_fits(hparams, [s.image for s in found.subjects], cfg.datasets.get("patch_size"))
    ids = [s.id for s in found.subjects]
    split_file = run_dir / "split.json"
    if resume_ckpt is not None and split_file.is_file():
        split = Split.load(split_file, ids)
    elif cfg.get("split_file"):
        split = Split.load(str(cfg.split_file), ids)
    else:
        d = cfg.datasets
        split = make_split(
            len(ids),
            float(d.train_ratio),
            bool(d.replace),
            d.get("k_sample"),
            d.get("train_val_test_idx"),
            bool(d.train_on_all),
            int(cfg.seed),
            groups=found.groups,
        )
    for group in crossing_groups(split, found.groups):
        log.warning(
            "the same subject is in both train and validation (fixed split): %s",
            " = ".join(ids[i] for i in group),
        )

    train_set, val_set = prepare_split(cfg, found, split)
    plan = None
    if cfg.get("budget") and resume_ckpt is None:
        from hsftrain.training.budget import make_plan

        network = None
        if pretrained is not None:
            hp = pretrained[2].hparams
            network = (int(hp.get("f_maps", 64)), int(hp.get("num_levels", 4)))
        cfg, plan = make_plan(
            cfg,
            train_set,
            val_set,
            lambda c: build_module(c, found, 1000, pretrained),
            started,
            network,
        )

    def write_run_files() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        split.save(split_file, ids, int(cfg.seed))
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if plan is not None:
            plan.save(run_dir / "plan.yaml")

    if resume_ckpt is None and is_rank_zero():  # a resume writes them once restored
        write_run_files()
    log.info(
        "run directory %s: %d train / %d val subjects", run_dir, len(split.train), len(split.val)
    )

    levels = (pretrained[2].hparams if pretrained else cfg.models.hparams).get("num_levels", 4)
    data = build_datamodule(cfg, train_set, val_set, int(levels))
    total = _total_steps(len(split.train), cfg)
    module = build_module(cfg, found, total, pretrained)
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/epoch/loss",
        mode="min",
        save_last=True,
    )
    callbacks: list[L.Callback] = [checkpoint, EpochTable(), *compression_callbacks(cfg)]
    bar = bool(cfg.lightning.get("enable_progress_bar", True))
    callbacks.append(StepProgress(int(cfg.lightning.get("log_every_n_steps") or 10), not bar))
    if resume_ckpt is not None:
        callbacks.append(OnTrainStart(write_run_files))
    if finetune:
        f = cfg.finetuning
        callbacks.append(GradualUnfreezing(str(f.mode), int(f.depth), int(f.unfreeze_frequency)))
    signals = SignalState()
    preemption = Preemption(signals, resume_command(run_dir, finetune))
    callbacks += [FiniteGuard(), preemption]
    kwargs = _trainer_kwargs(cfg)
    batches = math.ceil(len(split.train) / int(cfg.datasets.batch_size))
    kwargs["log_every_n_steps"] = max(1, min(int(kwargs.get("log_every_n_steps", 10)), batches))
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        logger=_logger(cfg, run_dir),
        callbacks=callbacks,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        **kwargs,
    )
    with warnings.catch_warnings(), catch_signals(signals):
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        _fit(trainer, module, data, resume_ckpt, preemption)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if plan is not None and trainer.current_epoch < plan.epochs and is_rank_zero():
        log.warning(
            "stopped at the budget after %d of %d planned epochs: the best checkpoint so far "
            "is kept and exported",
            trainer.current_epoch,
            plan.epochs,
        )
    best = checkpoint.best_model_path or checkpoint.last_model_path
    metrics_out = {"best_checkpoint": best, "global_step": _global_step(trainer, checkpoint)}
    metrics_out.update(metrics)
    if not is_rank_zero():  # the record is rank 0's to write
        return {**metrics, "run_dir": str(run_dir), "best_checkpoint": best}  # type: ignore[dict-item]
    if cfg.get("export_onnx", True) and best:
        from hsftrain.export.api import export_checkpoint

        onnx_path = export_checkpoint(best, run_dir / "model.onnx")
        metrics_out["onnx"] = str(onnx_path)
    (run_dir / "metrics.json").write_text(json.dumps(metrics_out, indent=1))
    _report(metrics)
    return {**metrics, "run_dir": str(run_dir), "best_checkpoint": best}  # type: ignore[dict-item]


def _global_step(trainer: L.Trainer, checkpoint: Any) -> int:
    """Optimiser steps taken; with ``ddp_spawn`` the count lives in the processes that
    trained, so it is read back from the last checkpoint."""
    last = Path(str(checkpoint.dirpath)) / "last.ckpt"
    if trainer.global_step or not last.is_file():
        return int(trainer.global_step)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    return int(saved.get("global_step", 0))


def resume_command(run_dir: Path, finetune: bool) -> str:
    """The command that continues the run in ``run_dir``."""
    return f"hsftrain {'finetune' if finetune else 'train'} resume={run_dir}"


def _fit(
    trainer: L.Trainer,
    module: SegmentationModule,
    data: SegmentationDataModule,
    resume_ckpt: Path | None,
    preemption: Preemption,
) -> None:
    """``trainer.fit``; Lightning's own SIGTERM stop becomes :class:`Interrupted` too."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from hsftrain.errors import Interrupted

    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(resume_ckpt) if resume_ckpt else None)
    except SIGTERMException as err:
        saved = f"saved {preemption.saved}" if preemption.saved else "nothing saved"
        raise Interrupted(
            f"SIGTERM: training stopped ({saved}). Continue with: {preemption.resume_command}"
        ) from err


def _report(metrics: dict[str, float]) -> None:
    dice = {k.removeprefix("val/dice/"): v for k, v in metrics.items() if k.startswith("val/dice/")}
    if dice:
        log.info(
            "validation Dice: %s (mean %.3f)",
            ", ".join(f"{k} {v:.3f}" for k, v in dice.items()),
            metrics.get("val/dice_mean", float("nan")),
        )

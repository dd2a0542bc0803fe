"""``train`` and ``finetune``: one code path from a composed config to a trained model.

``run(cfg, finetune)`` discovers the data, splits it (bagging when ``replace``), builds the
model (from a pretrained checkpoint when fine-tuning) and trains with Lightning.
Everything a run needs to be reproduced or resumed is in its run directory:
``config.yaml``, ``split.json``, ``checkpoints/``, logs and ``metrics.json``. Exporting the
best checkpoint to ONNX is the next stage (:func:`hsftrain.workflow.train_and_export`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from hsftrain.compression.pruning import compression_callbacks
from hsftrain.config.values import plain
from hsftrain.core.atomic import write_text_atomic
from hsftrain.core.errors import ConfigError, UserError
from hsftrain.core.logs import run_log
from hsftrain.data.datamodule import build_datamodule, prepare_split
from hsftrain.data.discovery import discover
from hsftrain.data.splits import Split, crossing_groups, make_split
from hsftrain.data.subjects import Discovery
from hsftrain.training.build import build_module, ignored_hparams, read_pretrained, run_classes
from hsftrain.training.callbacks import (
    EpochBar,
    EpochTable,
    OnTrainStart,
    RunCheckpoints,
    StepProgress,
)
from hsftrain.training.denormals import flush_denormals
from hsftrain.training.depth import check_network_fits
from hsftrain.training.distributed import is_rank_zero, publish_run_name, shared_run_name
from hsftrain.training.finetuning import GradualUnfreezing
from hsftrain.training.guards import (
    FiniteGuard,
    Preemption,
    SignalState,
    catch_signals,
    fit,
    spawned_forward,
)
from hsftrain.training.trainer import QUIET, make_logger, trainer_kwargs
from hsftrain.training.validate import validate_training

log = logging.getLogger(__name__)


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


def _total_steps(n_train: int, cfg: DictConfig) -> int:
    batch = int(cfg.datasets.batch_size)
    batches = n_train // batch if n_train > batch else 1  # full batches only (drop_last)
    limit = cfg.lightning.get("limit_train_batches")
    if isinstance(limit, int) and limit > 1:
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = max(1, int(batches * limit))
    steps = math.ceil(batches / int(cfg.lightning.get("accumulate_grad_batches") or 1))
    return steps * int(cfg.lightning.max_epochs)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (``path`` included) that does not exist yet."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_refused(run_dir: Path, created: Path) -> None:
    """Remove the run directory a refused run created, then the folders above it up to
    ``created`` that it left empty. A directory holding a checkpoint is kept."""
    if any((run_dir / "checkpoints").glob("*.ckpt")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for folder in run_dir.parents:
        if folder != created and created not in folder.parents:
            break
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
        if folder == created:
            break
    log.info("refused before training: removed the run directory %s it had created", run_dir)


@dataclass
class _Attempt:
    """What a run got to: ``started`` once training starts (after any restore)."""

    started: bool = False


def run(cfg: DictConfig, finetune: bool = False) -> dict[str, float]:
    """Train (or fine-tune) as configured, logging into ``<run>/train.log``. Returns the
    last validation metrics.

    A resume that fails before training starts (e.g. a checkpoint that does not load)
    leaves the run directory as it was (only ``train.log`` records the attempt). A new run
    refused before training starts (a :class:`~hsftrain.core.errors.UserError`) removes the run
    directory it created (and the empty folders it made above it); a folder that existed
    before is never removed.

    Raises:
        ConfigError, DataError, FileNotFoundError: with the key or file to fix.
    """
    validate_training(cfg, finetune)  # before anything is read or written
    flush_denormals()  # before torch starts its threads, which copy the flag (all of them)
    if not cfg.get("resume") and not cfg.get("run_name"):  # one name for the whole run
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.run_name = shared_run_name() or time.strftime("%Y%m%d-%H%M%S")
        publish_run_name(str(cfg.run_name))  # DDP processes launched later use it too
    run_dir, resume_ckpt = resolve_run_dir(cfg)
    created = _first_missing(run_dir) if resume_ckpt is None else None
    attempt = _Attempt()
    try:
        return _logged_run(cfg, finetune, run_dir, resume_ckpt, attempt)
    except UserError:
        if created is not None and not attempt.started and is_rank_zero() and run_dir.exists():
            _remove_refused(run_dir, created)
        raise


def _logged_run(
    cfg: DictConfig, finetune: bool, run_dir: Path, resume_ckpt: Path | None, attempt: _Attempt
) -> dict[str, float]:
    """:func:`_run` logging into ``<run>/train.log``; a resume that fails before training
    leaves the run directory as it was."""
    before = set(run_dir.iterdir()) if resume_ckpt is not None else set()
    stamp = resume_ckpt.stat().st_mtime_ns if resume_ckpt is not None else 0
    with run_log(run_dir) as log_file:
        try:
            return _run(cfg, finetune, attempt)
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


def _run(
    cfg: DictConfig, finetune: bool = False, attempt: _Attempt | None = None
) -> dict[str, float]:
    """Train (or fine-tune) as configured. Returns the last validation metrics; sets
    ``attempt.started`` once training starts.

    Raises:
        ConfigError, DataError, FileNotFoundError: with the key or file to fix.
    """
    started = time.monotonic()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    # the pretrained model first (fetched and verified): a wrong spec writes no run directory
    pretrained = read_pretrained(cfg) if finetune else None
    if pretrained is not None and (ignored := ignored_hparams(cfg, pretrained[2])):
        log.warning(
            "fine-tuning keeps the pretrained network: %s not used (the number of classes "
            "is finetuning.out_channels)",
            ", ".join(ignored),
        )
    run_dir, resume_ckpt = resolve_run_dir(cfg)
    found = discover(cfg.datasets, bool(cfg.models.get("use_forgiving_loss", True)))
    classes = run_classes(cfg, found, pretrained)  # disagreeing: refused before any write
    hparams = pretrained[2].hparams if pretrained else plain(cfg.models.hparams)
    from hsftrain.training.budget import plans_network  # budget= picks a depth that fits

    if pretrained is not None or resume_ckpt is not None or not plans_network(cfg):
        images = [s.image for s in found.subjects]
        check_network_fits(hparams, images, cfg.datasets.get("patch_size"))
    ids = [s.id for s in found.subjects]
    split_file = run_dir / "split.json"
    if resume_ckpt is not None and split_file.is_file():
        split = Split.load(split_file, ids)
    else:
        split = configured_split(cfg, found)
    for group in crossing_groups(split, found.groups):
        log.warning(
            "the same subject is in both train and validation (fixed split): %s",
            " = ".join(ids[i] for i in group),
        )

    train_set, val_set = prepare_split(cfg, found, split)
    plan = None
    if (cfg.get("budget") or cfg.get("plan")) and resume_ckpt is None:
        from hsftrain.training.budget import planned_run

        cfg, plan = planned_run(
            cfg,
            train_set,
            val_set,
            lambda c: build_module(c, found, 1000, pretrained),
            started,
            pretrained[2].hparams if pretrained is not None else None,
            classes,
        )

    record = RunRecord(run_dir, split, ids, cfg, plan)
    if resume_ckpt is None and is_rank_zero():  # a resume writes them once restored
        record.write()
    log.info(
        "run directory %s: %d train / %d val subjects", run_dir, len(split.train), len(split.val)
    )

    levels = (pretrained[2].hparams if pretrained else cfg.models.hparams).get("num_levels", 4)
    data = build_datamodule(cfg, train_set, val_set, int(levels))
    total = _total_steps(len(split.train), cfg)
    module = build_module(cfg, found, total, pretrained)
    if resume_ckpt is None and is_rank_zero():
        from hsftrain.training.estimate import estimate_run

        estimate_run(cfg, module, train_set, val_set, int(levels), total)
    checkpoint = RunCheckpoints(str(run_dir / "checkpoints"))
    callbacks: list[L.Callback] = [checkpoint, EpochTable(), *compression_callbacks(cfg)]
    bar = bool(cfg.lightning.get("enable_progress_bar", True))
    callbacks.append(StepProgress(int(cfg.lightning.get("log_every_n_steps") or 10), not bar))
    if bar:
        callbacks.append(EpochBar())
    if resume_ckpt is not None:
        callbacks.append(OnTrainStart(record.write))
    if attempt is not None:
        callbacks.append(OnTrainStart(partial(setattr, attempt, "started", True)))
    if finetune:
        f = cfg.finetuning
        callbacks.append(GradualUnfreezing(str(f.mode), int(f.depth), int(f.unfreeze_frequency)))
    if plan is not None:
        from hsftrain.training.pace import BudgetPace

        callbacks.append(BudgetPace(plan, started, record.paced))
    signals = SignalState()
    preemption = Preemption(signals, resume_command(run_dir, finetune))
    callbacks += [FiniteGuard(), preemption]
    kwargs = trainer_kwargs(cfg)
    batches = math.ceil(len(split.train) / int(cfg.datasets.batch_size))
    kwargs["log_every_n_steps"] = max(1, min(int(kwargs.get("log_every_n_steps", 10)), batches))
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        logger=make_logger(cfg, run_dir),
        callbacks=callbacks,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        **kwargs,
    )
    with warnings.catch_warnings(), catch_signals(signals, spawned_forward(trainer)):
        for pattern in QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        fit(trainer, module, data, str(resume_ckpt) if resume_ckpt else None, preemption)
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
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics_out, indent=1))
    _report(metrics)
    return {**metrics, "run_dir": str(run_dir), "best_checkpoint": best}  # type: ignore[dict-item]


def configured_split(cfg: DictConfig, found: Discovery) -> Split:
    """The split of a new run: ``split_file``'s, else a new one from ``datasets.*``."""
    ids = [s.id for s in found.subjects]
    if cfg.get("split_file"):
        return Split.load(str(cfg.split_file), ids)
    d = cfg.datasets
    return make_split(
        len(ids),
        float(d.train_ratio),
        bool(d.replace),
        d.get("k_sample"),
        d.get("train_val_test_idx"),
        bool(d.train_on_all),
        int(cfg.seed),
        groups=found.groups,
    )


def _global_step(trainer: L.Trainer, checkpoint: Any) -> int:
    """Optimiser steps taken; with ``ddp_spawn`` the count lives in the processes that
    trained, so it is read back from the last checkpoint."""
    last = Path(str(checkpoint.dirpath)) / "last.ckpt"
    if trainer.global_step or not last.is_file():
        return int(trainer.global_step)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    return int(saved.get("global_step", 0))


@dataclass
class RunRecord:
    """Writes a run's record: ``split.json``, ``config.yaml`` (and ``plan.yaml``). Its
    methods are what callbacks call, so it is picklable: ``ddp_spawn`` sends the callbacks
    to the processes that train (a local function could not go)."""

    run_dir: Path
    split: Split
    ids: list[str]
    cfg: DictConfig
    plan: Any = None

    def write(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.split.save(self.run_dir / "split.json", self.ids, int(self.cfg.seed))
        self.write_config()

    def write_config(self) -> None:
        write_text_atomic(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.cfg, resolve=True))
        if self.plan is not None:
            self.plan.save(self.run_dir / "plan.yaml")

    def paced(self, epochs: int) -> None:
        """The budget changed the number of epochs (the split does not change)."""
        OmegaConf.update(self.cfg, "lightning.max_epochs", epochs)
        if is_rank_zero():
            self.write_config()


def resume_command(run_dir: Path, finetune: bool) -> str:
    """The command that continues the run in ``run_dir``."""
    return f"hsftrain {'finetune' if finetune else 'train'} resume={run_dir}"


def _report(metrics: dict[str, float]) -> None:
    dice = {k.removeprefix("val/dice/"): v for k, v in metrics.items() if k.startswith("val/dice/")}
    if dice:
        log.info(
            "validation Dice: %s (mean %.3f)",
            ", ".join(f"{k} {v:.3f}" for k, v in dice.items()),
            metrics.get("val/dice_mean", float("nan")),
        )

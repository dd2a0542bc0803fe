"""``train`` and ``finetune``: one code path from a composed config to a trained model.

``run(cfg, finetune)`` checks the config into typed settings
(:func:`~hsftrain.training.validate.validate_training`), discovers the data, splits it (bagging when ``replace``), builds the
model (from a pretrained checkpoint when fine-tuning) and trains with Lightning.
Everything a run needs to be reproduced or resumed is in its run directory:
``config.yaml``, ``split.json``, ``checkpoints/``, logs and ``metrics.json``. Exporting the
best checkpoint to ONNX is the next stage (:func:`hsftrain.workflow.train_and_export`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, open_dict

from hsftrain.compression.pruning import compression_callbacks
from hsftrain.core.atomic import write_text_atomic
from hsftrain.core.errors import ConfigError, UserError
from hsftrain.core.logs import run_log
from hsftrain.data.cache import PreparedSubject
from hsftrain.data.datamodule import build_datamodule, prepare_split
from hsftrain.data.discovery import discover
from hsftrain.data.splits import Split, crossing_groups
from hsftrain.data.subjects import Discovery
from hsftrain.training.build import (
    Pretrained,
    build_module,
    ignored_hparams,
    module_for,
    read_pretrained,
    run_classes,
)
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
from hsftrain.training.record import (
    RunRecord,
    configured_split,
    first_missing,
    remove_refused,
    resolve_run_dir,
    resume_command,
)
from hsftrain.training.settings import (
    RunKind,
    TrainingSettings,
    optimiser_steps,
    steps_per_epoch,
)
from hsftrain.training.trainer import QUIET, make_logger, trainer_kwargs
from hsftrain.training.validate import validate_training

log = logging.getLogger(__name__)


def total_steps(n_train: int, settings: TrainingSettings) -> int:
    """Optimiser steps of the whole run (for the schedule and Demon)."""
    t = settings.trainer
    batches = steps_per_epoch(n_train, settings.data.batch_size, t.limit_train_batches)
    return optimiser_steps(batches, t.accumulate_grad_batches, t.max_epochs)


@dataclass
class _Attempt:
    """What a run got to: ``started`` once training starts (after any restore)."""

    started: bool = False


@dataclass(frozen=True)
class RunResult:
    """What a run gives back: its directory, best checkpoint, steps and last metrics."""

    run_dir: Path
    #: the best checkpoint (else the last one); empty when none was written
    best_checkpoint: str
    #: the last validation (and training) metrics, as logged
    metrics: dict[str, float]
    global_step: int = 0


def run(cfg: DictConfig, finetune: bool = False) -> RunResult:
    """Train (or fine-tune) as configured, logging into ``<run>/train.log``.

    A resume that fails before training starts (e.g. a checkpoint that does not load)
    leaves the run directory as it was (only ``train.log`` records the attempt). A new run
    refused before training starts (a :class:`~hsftrain.core.errors.UserError`) removes the run
    directory it created (and the empty folders it made above it); a folder that existed
    before is never removed.

    Raises:
        ConfigError, DataError, FileNotFoundError: with the key or file to fix.
    """
    settings = validate_training(cfg, finetune)  # before anything is read or written
    flush_denormals()  # before torch starts its threads, which copy the flag (all of them)
    if not cfg.get("resume") and not cfg.get("run_name"):  # one name for the whole run
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.run_name = shared_run_name() or time.strftime("%Y%m%d-%H%M%S")
        publish_run_name(str(cfg.run_name))  # DDP processes launched later use it too
    run_dir, resume_ckpt = resolve_run_dir(cfg)
    created = first_missing(run_dir) if resume_ckpt is None else None
    attempt = _Attempt()
    try:
        return _logged_run(cfg, settings, run_dir, resume_ckpt, attempt)
    except UserError:
        if created is not None and not attempt.started and is_rank_zero() and run_dir.exists():
            remove_refused(run_dir, created)
        raise


def _logged_run(
    cfg: DictConfig,
    settings: TrainingSettings,
    run_dir: Path,
    resume_ckpt: Path | None,
    attempt: _Attempt,
) -> RunResult:
    """:func:`_run` logging into ``<run>/train.log``; a resume that fails before training
    leaves the run directory as it was."""
    before = set(run_dir.iterdir()) if resume_ckpt is not None else set()
    stamp = resume_ckpt.stat().st_mtime_ns if resume_ckpt is not None else 0
    with run_log(run_dir) as log_file:
        try:
            return _run(cfg, settings, attempt)
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


@dataclass
class _Setup:
    """A run once its data are discovered and split (and its plan applied)."""

    cfg: DictConfig
    settings: TrainingSettings
    run_dir: Path
    resume_ckpt: Path | None
    found: Discovery
    pretrained: Pretrained | None
    classes: list[str]
    split: Split
    train_set: list[PreparedSubject]
    val_set: list[PreparedSubject]
    plan: Any = None

    @property
    def finetune(self) -> bool:
        return self.settings.kind is RunKind.FINETUNE

    @property
    def num_levels(self) -> int:
        """Levels of the network trained (the pretrained one when fine-tuning)."""
        if self.pretrained is not None:
            return int(self.pretrained[2].hparams.get("num_levels", 4))
        return int(self.settings.network.hparams.get("num_levels", 4))


def _run(cfg: DictConfig, settings: TrainingSettings, attempt: _Attempt | None = None) -> RunResult:
    """Train (or fine-tune) as configured; sets ``attempt.started`` once training starts.

    Raises:
        ConfigError, DataError, FileNotFoundError: with the key or file to fix.
    """
    started = time.monotonic()
    L.seed_everything(settings.seed, workers=True, verbose=False)
    setup = _discover(cfg, settings)
    if settings.plans and setup.resume_ckpt is None:
        setup = _planned(setup, started)
    record = RunRecord(setup.run_dir, setup.split, _ids(setup.found), setup.cfg, setup.plan)
    if setup.resume_ckpt is None and is_rank_zero():  # a resume writes them once restored
        record.write()
    log.info(
        "run directory %s: %d train / %d val subjects",
        setup.run_dir, len(setup.split.train), len(setup.split.val),
    )  # fmt: skip
    settings = setup.settings
    data = build_datamodule(settings, setup.train_set, setup.val_set, setup.num_levels)
    total = total_steps(len(setup.split.train), settings)
    module = build_module(settings, setup.found, setup.classes, total, setup.pretrained)
    if setup.resume_ckpt is None and is_rank_zero():
        from hsftrain.training.estimate import estimate_run

        estimate_run(setup.cfg, module, setup.train_set, setup.val_set, setup.num_levels, total)
    checkpoint = RunCheckpoints(str(setup.run_dir / "checkpoints"))
    signals = SignalState()
    preemption = Preemption(signals, resume_command(setup.run_dir, setup.finetune))
    callbacks = _callbacks(setup, checkpoint, record, attempt, started)
    trainer = _trainer(setup, [*callbacks, FiniteGuard(), preemption])
    with warnings.catch_warnings(), catch_signals(signals, spawned_forward(trainer)):
        for pattern in QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        resume = str(setup.resume_ckpt) if setup.resume_ckpt else None
        fit(trainer, module, data, resume, preemption)
    return _finish(setup, trainer, checkpoint)


def _ids(found: Discovery) -> list[str]:
    return [s.id for s in found.subjects]


def _discover(cfg: DictConfig, settings: TrainingSettings) -> _Setup:
    """The pretrained network (fine-tuning), the data, the classes and the split: all
    checked before anything is written."""
    finetune = settings.kind is RunKind.FINETUNE
    # the pretrained model first (fetched and verified): a wrong spec writes no run directory
    pretrained = read_pretrained(cfg) if finetune else None
    if pretrained is not None and (ignored := ignored_hparams(cfg, pretrained[2])):
        log.warning(
            "fine-tuning keeps the pretrained network: %s not used (the number of classes "
            "is finetuning.out_channels)",
            ", ".join(ignored),
        )
    run_dir, resume_ckpt = resolve_run_dir(cfg)
    found = discover(cfg.datasets, settings.loss.forgiving)
    classes = run_classes(cfg, found, pretrained)  # disagreeing: refused before any write
    hparams = pretrained[2].hparams if pretrained else dict(settings.network.hparams)
    from hsftrain.training.budget import plans_network  # budget= picks a depth that fits

    if pretrained is not None or resume_ckpt is not None or not plans_network(cfg):
        images = [s.image for s in found.subjects]
        check_network_fits(hparams, images, settings.data.patch_size)
    ids = _ids(found)
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
    return _Setup(
        cfg, settings, run_dir, resume_ckpt, found, pretrained, classes, split, train_set, val_set
    )


def _planned(setup: _Setup, started: float) -> _Setup:
    """``setup`` with the plan of ``budget=`` / ``plan=`` applied (its settings rebuilt
    from the planned config)."""
    from hsftrain.training.plan import planned_run

    pretrained, finetune = setup.pretrained, setup.finetune
    cfg, plan = planned_run(
        setup.cfg,
        setup.train_set,
        setup.val_set,
        lambda c: module_for(c, setup.found, 1000, pretrained),
        started,
        pretrained[2].hparams if pretrained is not None else None,
        setup.classes,
    )
    return replace(setup, cfg=cfg, settings=validate_training(cfg, finetune), plan=plan)


def _callbacks(
    setup: _Setup,
    checkpoint: RunCheckpoints,
    record: RunRecord,
    attempt: _Attempt | None,
    started: float,
) -> list[L.Callback]:
    """The run's callbacks, before the guards (NaN, preemption) that come last."""
    settings = setup.settings
    callbacks: list[L.Callback] = [checkpoint, EpochTable(), *compression_callbacks(setup.cfg)]
    bar = settings.trainer.enable_progress_bar
    callbacks.append(StepProgress(settings.trainer.log_every_n_steps, not bar))
    if bar:
        callbacks.append(EpochBar())
    if setup.resume_ckpt is not None:
        callbacks.append(OnTrainStart(record.write))
    if attempt is not None:
        callbacks.append(OnTrainStart(partial(setattr, attempt, "started", True)))
    if settings.finetune is not None:
        f = settings.finetune
        callbacks.append(GradualUnfreezing(str(f.mode), f.depth, f.unfreeze_frequency))
    if setup.plan is not None:
        from hsftrain.training.pace import BudgetPace

        callbacks.append(BudgetPace(setup.plan, started, record.paced))
    return callbacks


def _trainer(setup: _Setup, callbacks: list[L.Callback]) -> L.Trainer:
    """The Lightning ``Trainer`` of the run, logging into its directory."""
    settings = setup.settings
    kwargs = trainer_kwargs(setup.cfg)
    batches = steps_per_epoch(
        len(setup.split.train), settings.data.batch_size, settings.trainer.limit_train_batches
    )
    kwargs["log_every_n_steps"] = max(1, min(int(kwargs.get("log_every_n_steps", 10)), batches))
    return L.Trainer(
        default_root_dir=str(setup.run_dir),
        logger=make_logger(setup.cfg, setup.run_dir),
        callbacks=callbacks,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        **kwargs,
    )


def _finish(setup: _Setup, trainer: L.Trainer, checkpoint: RunCheckpoints) -> RunResult:
    """The run's result; rank 0 writes ``metrics.json`` and logs the validation Dice."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    plan = setup.plan
    if plan is not None and trainer.current_epoch < plan.epochs and is_rank_zero():
        log.warning(
            "stopped at the budget after %d of %d planned epochs: the best checkpoint so far "
            "is kept and exported",
            trainer.current_epoch,
            plan.epochs,
        )
    best = checkpoint.best_model_path or checkpoint.last_model_path
    result = RunResult(setup.run_dir, best, metrics, _global_step(trainer, checkpoint))
    if not is_rank_zero():  # the record is rank 0's to write
        return result
    record = {"best_checkpoint": best, "global_step": result.global_step, **metrics}
    write_text_atomic(setup.run_dir / "metrics.json", json.dumps(record, indent=1))
    _report(metrics)
    return result


def _global_step(trainer: L.Trainer, checkpoint: Any) -> int:
    """Optimiser steps taken; with ``ddp_spawn`` the count lives in the processes that
    trained, so it is read back from the last checkpoint."""
    last = Path(str(checkpoint.dirpath)) / "last.ckpt"
    if trainer.global_step or not last.is_file():
        return int(trainer.global_step)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    return int(saved.get("global_step", 0))


def _report(metrics: dict[str, float]) -> None:
    dice = {k.removeprefix("val/dice/"): v for k, v in metrics.items() if k.startswith("val/dice/")}
    if dice:
        log.info(
            "validation Dice: %s (mean %.3f)",
            ", ".join(f"{k} {v:.3f}" for k, v in dice.items()),
            metrics.get("val/dice_mean", float("nan")),
        )

"""Pruning during ``train`` / ``finetune``: the ``compression`` config group.

Two Lightning callbacks, added by :func:`compression_callbacks`:

* :class:`GradualMagnitudePruning` (``compression.pruning``): unstructured L1 magnitude
  pruning of the Conv3d / ConvTranspose3d weights with ``torch.nn.utils.prune`` masks
  (``custom_from_mask``), global or per layer, following the cubic schedule of Zhu & Gupta (2017)::

      s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3

  from ``init_sparsity`` s_i at ``start_epoch`` t0 to ``final_sparsity`` s_f at
  ``end_epoch`` = t0 + n * dt, updated every ``update_frequency`` dt epochs; the masks stay
  applied until the end of training, then are made permanent (``prune.remove``), so
  checkpoints and ONNX exports hold plain, zeroed weights. Saved checkpoints never hold
  ``weight_orig`` / ``weight_mask``: the masked weights are written as ``weight``.
  This is what SparseML's ``GMPruningModifier`` + ``ConstantPruningModifier`` did in
  hsf_train. It makes the model file compressible, not faster: ONNX Runtime runs zeros
  as fast as any other number (see docs/export.md).
* :class:`StructuredPruning` (``compression.structured``): at ``epoch``, removes a
  ``ratio`` of the feature channels of every level (L1 ranking, see
  :mod:`hsftrain.compression.structured`), swaps ``pl_module.net`` for the smaller dense network
  and rebuilds the optimizer; the remaining epochs fine-tune it. The checkpoint's
  ``model_hparams.f_maps`` becomes the new list, so checkpoints reload with
  :func:`hsftrain.training.checkpoint.load_network`.

Checkpoints written before the compression is complete are not eligible as "best": the
``ModelCheckpoint`` ranking is restarted when the final sparsity is reached and after the
structural cut (and such earlier best checkpoints are deleted), so the exported best model
is always the compressed one.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from hsftrain.compression.sparsity import (
    PRUNABLE,
    apply_sparsity,
    cubic_sparsity,
    make_permanent,
    weight_sparsity,
)
from hsftrain.compression.structured import fold_masks, like_layout, require_prunable
from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError

log = logging.getLogger(__name__)


def restart_best(trainer: L.Trainer, reason: str) -> None:
    """Forget the ``ModelCheckpoint`` ranking so far (and delete those best files).

    Called when the network changes in kind (final sparsity reached, channels cut):
    an earlier, less compressed checkpoint must not be picked as the best model.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or callback.monitor is None:
            continue
        for path in list(callback.best_k_models):
            if path and path != callback.last_model_path:
                trainer.strategy.remove_checkpoint(path)
        callback.best_k_models = {}
        callback.kth_best_model_path = ""
        callback.kth_value = torch.tensor(math.inf if callback.mode == "min" else -math.inf)
        callback.best_model_score = None
        callback.best_model_path = ""
    log.info("%s: best-checkpoint ranking restarted", reason)


class GradualMagnitudePruning(L.Callback):
    """Gradual magnitude pruning (cubic schedule) of a LightningModule's ``net``.

    Args:
        start_epoch, end_epoch: first epoch pruned, epoch where ``final_sparsity`` is
            reached (fractions allowed: updates may happen within an epoch).
        init_sparsity, final_sparsity: fractions of the prunable weights set to zero.
        update_frequency: epochs between two mask updates.
        scope: ``global`` (one magnitude threshold for all layers) or ``layer``.
        layers: module types pruned (``Conv3d``, ``ConvTranspose3d``).
    """

    def __init__(
        self,
        start_epoch: float = 0.0,
        end_epoch: float = 10.0,
        init_sparsity: float = 0.05,
        final_sparsity: float = 0.7,
        update_frequency: float = 1.0,
        scope: str = "global",
        layers: Iterable[str] = ("Conv3d", "ConvTranspose3d"),
    ) -> None:
        self.start_epoch, self.end_epoch = float(start_epoch), float(end_epoch)
        self.init_sparsity, self.final_sparsity = float(init_sparsity), float(final_sparsity)
        self.update_frequency = float(update_frequency)
        self.scope = str(scope)
        self.layers = tuple(layers)
        self.current = 0.0
        self.done = False

    def target(self, epoch: float) -> float:
        return cubic_sparsity(
            epoch,
            self.start_epoch,
            self.end_epoch,
            self.init_sparsity,
            self.final_sparsity,
            self.update_frequency,
        )

    def step(self, pl_module: L.LightningModule, epoch: float) -> float | None:
        """Apply the schedule at fractional ``epoch``; the new sparsity if masks changed."""
        target = self.target(epoch)
        if target <= self.current + 1e-12:
            return None
        self.current = target
        return apply_sparsity(trained_net(pl_module), target, self.scope, self.layers)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        batches = trainer.num_training_batches
        frac = batch_idx / batches if isinstance(batches, int) and batches > 0 else 0.0
        epoch = trainer.current_epoch + frac
        if (new := self.step(pl_module, epoch)) is not None:
            log.info("epoch %.2f: pruned %.1f%% of the conv weights", epoch, 100 * new)
            if not self.done and self.target(epoch) >= self.final_sparsity - 1e-12:
                self.done = True
                restart_best(trainer, f"final sparsity {self.final_sparsity:.0%} reached")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("compression/sparsity", weight_sparsity(trained_net(pl_module), self.layers))

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["state_dict"] = fold_masks(checkpoint["state_dict"])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        removed = make_permanent(trained_net(pl_module))
        if removed:
            log.info(
                "pruning made permanent: %.1f%% of the conv weights are zero",
                100 * weight_sparsity(trained_net(pl_module), self.layers),
            )

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "done": self.done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.current = 0.0  # masks are rebuilt from the (zeroed) weights on resume
        self.done = bool(state_dict.get("done", False))


class StructuredPruning(L.Callback):
    """At ``epoch``, cut a ``ratio`` of every level's channels and keep training.

    Args:
        epoch: the epoch at whose start the network is cut (0: before any training).
        ratio: fraction of channels removed, one value or one per level.
        min_channels: channels kept at least per level.
    """

    def __init__(
        self, epoch: int = 0, ratio: float | list[float] = 0.5, min_channels: int = 2
    ) -> None:
        self.epoch = int(epoch)
        self.ratio = ratio
        self.min_channels = int(min_channels)
        self.applied = False

    def cut(self, trainer: L.Trainer | None, pl_module: L.LightningModule) -> None:
        """Swap ``pl_module.net`` for the pruned network (and refresh the optimizer)."""
        from hsftrain.compression.structured import structured_prune

        hparams = dict(pl_module.hparams["model_hparams"])
        unet = require_prunable(trained_net(pl_module))
        new, params, _ = structured_prune(unet, self.ratio, hparams, self.min_channels)
        pl_module.net = new
        pl_module.hparams["model_hparams"] = params
        self.applied = True
        if trainer is None:
            return
        for callback in getattr(trainer, "callbacks", []):
            if isinstance(callback, GradualMagnitudePruning):
                callback.current = 0.0  # masks are re-applied to the new network
        if trainer.optimizers:
            _rebuild_optimizers(trainer)
        restart_best(trainer, f"channels cut to f_maps {params['f_maps']}")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_prunable(trained_net(pl_module))  # before any epoch, not at the cut
        pl_module._register_load_state_dict_pre_hook(_match_net_to_state, with_module=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.applied and trainer.current_epoch >= self.epoch:
            self.cut(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # On resume the module is rebuilt from the checkpoint's (already cut) hparams.
        self.applied = bool(state_dict.get("applied", False))


def trained_net(module: L.LightningModule) -> nn.Module:
    """The network a LightningModule trains (its ``net``).

    Raises:
        TypeError: the module has no ``net`` network.
    """
    net = getattr(module, "net", None)
    if not isinstance(net, nn.Module):
        raise TypeError(f"{type(module).__name__} has no `net` network to compress")
    return net


def _state_f_maps(state: Mapping[str, torch.Tensor], prefix: str, num_levels: int) -> list[int]:
    """Channels per level of the network whose state dict is ``state``."""
    sizes = []
    for level in range(num_levels):
        block = f"{prefix}encoders.{level}." + ("" if level == 0 else "1.") + "conv1."
        weights = [v for k, v in state.items() if k.startswith(block) and v.ndim == 5]
        if not weights:
            return []
        sizes.append(int(weights[0].shape[0]))
    return sizes


def _match_net_to_state(
    module: L.LightningModule, state: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """Load-state-dict pre-hook: rebuild ``module.net`` with the channels of a checkpoint
    written after a structural cut (resuming such a run)."""
    from hsftrain.models import build_model

    hparams = dict(module.hparams["model_hparams"])
    net = require_prunable(trained_net(module))
    sizes = _state_f_maps(state, prefix + "net.", len(net.encoders))
    current = _state_f_maps(net.state_dict(), "", len(net.encoders))
    if sizes and sizes != current:
        hparams["f_maps"] = sizes
        module.net = like_layout(build_model(module.hparams["model_name"], hparams), net)
        module.hparams["model_hparams"] = hparams
        log.info("resuming a channel-pruned run: network rebuilt with f_maps %s", sizes)


def _rebuild_optimizers(trainer: L.Trainer) -> None:
    """New optimizer over the new parameters; the LR schedule continues where it was."""
    step = int(trainer.global_step)
    trainer.strategy.setup_optimizers(trainer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, ReduceLROnPlateau):  # needs the metric: not replayable
                continue
            for _ in range(step):
                scheduler.step()


def _section(cfg: Any, key: str) -> dict[str, Any] | None:
    value = plain(cfg.get(key)) if cfg is not None else None
    if value is None or value is False:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(f"compression.{key} must be a mapping or null, not {value!r}")
    if value.get("enabled", True) is False:
        return None
    return dict(value)


def _check_fraction(key: str, value: Any, upper_open: bool = True) -> float:
    fraction = float(value)
    ok = 0 <= fraction < 1 if upper_open else 0 <= fraction <= 1
    if not ok:
        raise ConfigError(
            f"compression.{key}={fraction}: must be in [0, 1{')' if upper_open else ']'}"
        )
    return fraction


def compression_callbacks(cfg: DictConfig | Mapping[str, Any]) -> list[L.Callback]:
    """The callbacks of the run's ``compression`` group (empty for ``compression=none``).

    Raises:
        ConfigError: inconsistent keys (named), e.g. an ``end_epoch`` past
            ``lightning.max_epochs``.
    """
    comp = cfg.get("compression")
    callbacks: list[L.Callback] = []
    if not comp:
        return callbacks
    lightning_cfg = cfg.get("lightning") or {}
    max_epochs = lightning_cfg.get("max_epochs")
    known = {"pruning", "structured"}
    unknown = sorted(set(comp) - known)
    if unknown:
        raise ConfigError(f"compression.{unknown[0]}: unknown key (use {sorted(known)})")
    if (p := _section(comp, "pruning")) is not None:
        allowed = {
            "enabled",
            "start_epoch",
            "end_epoch",
            "init_sparsity",
            "final_sparsity",
            "update_frequency",
            "scope",
            "layers",
        }
        bad = sorted(set(p) - allowed)
        if bad:
            raise ConfigError(f"compression.pruning.{bad[0]}: unknown key (use {sorted(allowed)})")
        start, end = float(p.get("start_epoch", 0)), float(p.get("end_epoch", 1))
        if end < start:
            raise ConfigError(f"compression.pruning.end_epoch={end} is before start_epoch={start}")
        if max_epochs is not None and end > int(max_epochs):
            raise ConfigError(
                f"compression.pruning.end_epoch={end:g} is after lightning.max_epochs={max_epochs}: "
                "lower it or train longer"
            )
        scope = str(p.get("scope", "global"))
        if scope not in ("global", "layer"):
            raise ConfigError(f"compression.pruning.scope={scope!r}: use 'global' or 'layer'")
        layers = list(p.get("layers") or PRUNABLE)
        if bad := [t for t in layers if t not in PRUNABLE]:
            raise ConfigError(f"compression.pruning.layers: {bad} unknown (use {list(PRUNABLE)})")
        init = _check_fraction("pruning.init_sparsity", p.get("init_sparsity", 0.05))
        final = _check_fraction("pruning.final_sparsity", p.get("final_sparsity", 0.7))
        if final < init:
            raise ConfigError(f"compression.pruning.final_sparsity={final} < init_sparsity={init}")
        freq = float(p.get("update_frequency", 1.0))
        if freq <= 0:
            raise ConfigError(f"compression.pruning.update_frequency={freq}: must be > 0 epochs")
        callbacks.append(GradualMagnitudePruning(start, end, init, final, freq, scope, layers))
    if (s := _section(comp, "structured")) is not None:
        allowed = {"enabled", "epoch", "ratio", "min_channels"}
        bad = sorted(set(s) - allowed)
        if bad:
            raise ConfigError(
                f"compression.structured.{bad[0]}: unknown key (use {sorted(allowed)})"
            )
        epoch = int(s.get("epoch", 0))
        if max_epochs is not None and epoch >= int(max_epochs):
            raise ConfigError(
                f"compression.structured.epoch={epoch} leaves no epoch to fine-tune the cut "
                f"network (lightning.max_epochs={max_epochs})"
            )
        ratio = s.get("ratio", 0.5)
        ratios = ratio if isinstance(ratio, list) else [ratio]
        for r in ratios:
            _check_fraction("structured.ratio", r)
        callbacks.append(StructuredPruning(epoch, ratio, int(s.get("min_channels", 2))))
    return callbacks

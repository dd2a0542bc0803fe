"""The LightningModule: forward, forgiving loss, AdamP + warm-up cosine, per-label Dice.

The training step never waits on the host: the loss indexes per-dataset tables on the
device, and validation Dice is accumulated as device tensors (a sum and a count per class
name) and reduced across processes once per epoch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import lightning as L
import numpy as np
import torch

from hsftrain.losses import FocalTverskyLoss, ForgivingLoss
from hsftrain.losses.tables import LackingTables, dataset_tables
from hsftrain.models import Network, UNet3D, build_model, channels_last
from hsftrain.optim import AdamP, warmup_cosine
from hsftrain.training.denormals import flush_denormals

SURFACE_KEYS = ("hd95_mm", "assd_mm")


class SegmentationModule(L.LightningModule):
    """Trains a U-Net on ``{"image", "label", "dataset"}`` batches.

    Args:
        model_name, model_hparams: network (``models.name``, ``models.hparams``).
        class_names: the model's output classes (index = label value).
        dataset_classes: each dataset's class names (index = its label value).
        dataset_ca: each dataset's CA granularity.
        optim: ``models`` config subset: lr, optimizer, scheduler, loss, use_forgiving_loss.
        total_steps: optimiser steps of the whole run (for the schedule and Demon).
        config: the full run config, stored in checkpoints.
        surface_every: also compute HD95 and ASSD (mm) every N validation epochs; 0 = only
            at the last epoch; -1 = never.
        compile: run the network through ``torch.compile`` (the weights and checkpoints are
            those of the plain network).
        lacking_tables: the loss tables of subjects whose maps lack some of their dataset's
            classes (:attr:`hsftrain.data.subjects.Discovery.lacking_tables`): forgiven
            there with the forgiving loss, and left out of validation Dice. Batches carry
            each item's table index as ``"table"`` (else ``"dataset"`` is used).

    With ``optim["ema_decay"]`` > 0 an exponential moving average of the weights (and
    buffers) follows training; validation runs on it and checkpoints hold it as the network's
    weights (what export and fine-tuning read), the trained weights under ``ema_raw`` (what a
    resume continues from).
    """

    #: validation Dice accumulators (buffers, see :meth:`set_datasets`)
    dice_slot: torch.Tensor
    dice_sum: torch.Tensor
    dice_count: torch.Tensor

    def __init__(
        self,
        model_name: str,
        model_hparams: dict[str, Any],
        class_names: list[str],
        dataset_classes: dict[int, list[str]],
        dataset_ca: dict[int, str],
        optim: dict[str, Any],
        total_steps: int,
        ca_mode: str = "1/2/3",
        config: dict[str, Any] | None = None,
        surface_every: int = 0,
        compile: bool = False,
        lacking_tables: LackingTables | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # channels-last: 3D convolution backward is several times faster in this layout on CPU
        self.net: Network = channels_last(build_model(model_name, model_hparams))
        self.class_names = class_names
        self.optim_cfg = optim
        self.total_steps = max(int(total_steps), 1)
        self.set_datasets(dataset_classes, dataset_ca, lacking_tables)
        self.surface_every = int(surface_every)
        self._surface: dict[str, list[float]] = defaultdict(list)
        # a compiled view of the network, kept out of the module tree (state_dict unchanged)
        deep = len(self.net.aux_heads) if isinstance(self.net, UNet3D) else 0
        #: loss weight of each output in training (the head first): half per level deeper
        self.output_weights = [0.5**i / (2 - 0.5**deep) for i in range(deep + 1)]
        train_forward = self.net.forward_deep if isinstance(self.net, UNet3D) and deep else self.net
        self._compiled: list[Any] = [torch.compile(train_forward)] if compile else []
        self.ema_decay = float(optim.get("ema_decay", 0.0) or 0.0)
        self._ema: list[torch.Tensor] = []  # also kept out of the module tree
        self._ema_updates = 0
        self._ema_in_net = False  # True while validation runs on the average
        self._ema_step = -1  # the optimiser step the average last followed

    def set_datasets(
        self,
        dataset_classes: dict[int, list[str]],
        dataset_ca: dict[int, str],
        lacking_tables: LackingTables | None = None,
    ) -> None:
        """(Re)build the loss for the given datasets' label schemes (and the tables of
        subjects lacking classes)."""
        forgiving = bool(self.optim_cfg.get("use_forgiving_loss", True))
        lacking = dict(lacking_tables or {})
        tables = dataset_tables(self.class_names, dataset_classes, dataset_ca, forgiving, lacking)
        loss_cfg = dict(self.optim_cfg.get("loss") or {})
        ce_weight = float(loss_cfg.pop("ce_weight", 0.0) or 0.0)
        self.loss = ForgivingLoss(
            {d: torch.from_numpy(t) for d, t in tables.items()},
            FocalTverskyLoss(**loss_cfg),
            ce_weight,
        )
        self.dataset_classes = dataset_classes
        self.lacking = {t: tuple(values) for t, (_, values) in lacking.items()}
        # validation Dice accumulators: one slot per class name (background excluded); a
        # class a subject's map lacks has none there (-1: not counted, neither 0 nor 1)
        self.dice_names = list(
            dict.fromkeys(n for names in dataset_classes.values() for n in names[1:])
        )
        slot = torch.full(tuple(self.loss.valid.shape), -1, dtype=torch.long)
        for d, names in dataset_classes.items():
            for value, name in enumerate(names[1:], start=1):
                slot[d, value] = self.dice_names.index(name)
        for t, (d, values) in lacking.items():
            slot[t] = slot[d]
            slot[t, list(values)] = -1
        self.register_buffer("dice_slot", slot, persistent=False)
        self.register_buffer("dice_sum", torch.zeros(len(self.dice_names)), persistent=False)
        self.register_buffer("dice_count", torch.zeros(len(self.dice_names)), persistent=False)

    def on_fit_start(self) -> None:
        # Late in training, tiny weights and activations become denormal floats, which x86
        # CPUs process about twice as slowly (measured: 0.56 -> 0.31 s/step on the demo
        # network); flushing them to zero changes nothing measurable (no effect on GPU).
        if self.device.type == "cpu":
            flush_denormals(warn=True)  # run() already did, before torch's threads started

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, X, Y, Z)`` for images ``(B, 1, X, Y, Z)``."""
        deep = len(self.output_weights) > 1  # then the compiled view is forward_deep
        net = self._compiled[0] if self._compiled and self.training and not deep else self.net
        logits: torch.Tensor = net(x.contiguous(memory_format=torch.channels_last_3d))
        return logits

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and the head's probabilities; in training with deep supervision, the loss is
        the weighted sum over the head and the auxiliary heads (``output_weights``)."""
        label, dataset = batch["label"].long(), batch.get("table", batch["dataset"])
        if not (self.training and len(self.output_weights) > 1):
            probs = torch.softmax(self(batch["image"]).float(), dim=1)
            return self.loss(probs, label, dataset), probs
        x = batch["image"].contiguous(memory_format=torch.channels_last_3d)
        assert isinstance(self.net, UNet3D)  # the only network with deep supervision
        net = self._compiled[0] if self._compiled else self.net.forward_deep
        outputs = [torch.softmax(o.float(), dim=1) for o in net(x)]
        losses = [
            w * self.loss(p, label, dataset)
            for w, p in zip(self.output_weights, outputs, strict=True)
        ]
        return torch.stack(losses).sum(), outputs[0]

    def _log_loss(
        self, name: str, loss: torch.Tensor, batch: dict[str, Any], on_step: bool
    ) -> None:
        """Log a batch loss under ``name``: its epoch mean (weighted by batch size, reduced
        across processes) in the progress bar, and each step's value when ``on_step``."""
        self.log(
            name,
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["image"].shape[0],
            sync_dist=True,
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch)
        self._log_loss("train/loss", loss, batch, on_step=True)
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # one optimizer (configure_optimizers)
        self.log("lr", optimizer.param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _weights(self) -> dict[str, torch.Tensor]:
        """The network's checkpointed tensors (parameters and persistent buffers), in place."""
        return self.net.state_dict(keep_vars=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema_decay <= 0:
            return
        if self._trainer is not None:  # once per optimiser step (gradient accumulation)
            if self.trainer.global_step == self._ema_step:
                return
            self._ema_step = self.trainer.global_step
        current = [t.detach() for t in self._weights().values()]
        with torch.no_grad():
            if not self._ema:  # the average starts as the weights
                self._ema = [t.clone() for t in current]
            elif self._ema[0].device != current[0].device:  # restored on another device
                self._ema = [e.to(current[0].device) for e in self._ema]
            if self._ema_updates:  # a shorter memory at first: the start does not dominate
                n = self._ema_updates
                weight = 1.0 - min(self.ema_decay, (1 + n) / (10 + n))
                pairs = list(zip(self._ema, current, strict=True))
                floats = [(e, t) for e, t in pairs if e.is_floating_point()]
                torch._foreach_lerp_([e for e, _ in floats], [t for _, t in floats], weight)
                for e, t in pairs:
                    if not e.is_floating_point():  # counters: the current value
                        e.copy_(t)
        self._ema_updates += 1

    def _swap_ema(self) -> None:
        """Exchange the network's weights and the average (validation runs on the average)."""
        with torch.no_grad():
            for e, t in zip(self._ema, self._weights().values(), strict=True):
                kept = t.detach().clone()
                t.detach().copy_(e)
                e.copy_(kept)
        self._ema_in_net = not self._ema_in_net

    def on_validation_epoch_start(self) -> None:
        if self._ema and not self._ema_in_net:
            self._swap_ema()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self._ema:
            return
        state = checkpoint["state_dict"]
        names = [f"net.{k}" for k in self._weights()]
        kept = {k: e.detach().clone() for k, e in zip(names, self._ema, strict=True)}
        # the network holds the trained weights, except when saved during validation
        average, trained = (state, kept) if self._ema_in_net else (kept, state)
        checkpoint["ema_raw"] = {k: trained[k] for k in names}
        state.update({k: average[k] for k in names})
        checkpoint["ema_updates"] = self._ema_updates

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the loss tables follow the data this run found (a resumed run may find other maps
        # lacking a class, so other tables): not the saved ones, which may differ in shape
        for name, table in self.loss.named_buffers(prefix="loss"):
            if name in checkpoint.get("state_dict", {}):
                checkpoint["state_dict"][name] = table.detach().clone()
        raw = checkpoint.get("ema_raw")
        if not raw:
            return
        state = checkpoint["state_dict"]
        names = [f"net.{k}" for k in self._weights()]
        self._ema = [state[k].detach().clone() for k in names]
        state.update(raw)  # the trained weights: training goes on from them
        self._ema_updates = int(checkpoint.get("ema_updates", 0))
        self._ema_in_net = False

    def _surface_now(self) -> bool:
        if self.surface_every < 0 or self._trainer is None:
            return False
        epoch = self.current_epoch
        last = epoch >= (self.trainer.max_epochs or 0) - 1
        return last or (self.surface_every > 0 and (epoch + 1) % self.surface_every == 0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, probs = self._step(batch)
        self._log_loss("val/epoch/loss", loss, batch, on_step=False)
        dataset = batch.get("table", batch["dataset"]).to(self.device).long()
        pred = self.loss.grouped(probs, dataset).argmax(1)
        self._accumulate_dice(pred, batch["label"].long(), dataset)
        if self._surface_now():
            self._surface_metrics(pred, batch)

    def _accumulate_dice(
        self, pred: torch.Tensor, ref: torch.Tensor, dataset: torch.Tensor
    ) -> None:
        """Add each item's per-class Dice (1 when both are empty) to the device sums; a
        class the item's map lacks is not counted.

        Args:
            pred, ref: ``(B, X, Y, Z)`` label maps in each item's dataset classes.
            dataset: ``(B,)`` loss table index of each item (its dataset's, or that of the
                classes its map lacks).
        """
        groups = self.loss.valid.shape[1]
        pred_1h = torch.nn.functional.one_hot(pred, groups).flatten(1, -2).float()
        ref_1h = torch.nn.functional.one_hot(ref, groups).flatten(1, -2).float()
        overlap = (pred_1h * ref_1h).sum(1)  # (B, G)
        total = pred_1h.sum(1) + ref_1h.sum(1)
        dice = torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))
        slot = self.dice_slot[dataset]  # (B, G), -1 for background and padding
        counted = slot >= 0
        index = slot.clamp_min(0)
        self.dice_sum.index_add_(0, index[counted], dice[counted])
        self.dice_count.index_add_(0, index[counted], torch.ones_like(dice[counted]))

    def _surface_metrics(self, pred: torch.Tensor, batch: dict[str, Any]) -> None:
        """HD95 and ASSD (mm) of each item, on the CPU (only when due: they are slow)."""
        from hsftrain.evaluation.metrics import label_metrics

        tables = batch.get("table", batch["dataset"])
        for b in range(pred.shape[0]):
            names = self.dataset_classes[int(batch["dataset"][b])]
            lacking = self.lacking.get(int(tables[b]), ())
            per_label = label_metrics(
                pred[b].cpu().numpy(),
                batch["label"][b].cpu().numpy(),
                [v for v in range(1, len(names)) if v not in lacking],
                batch["spacing"][b].tolist(),
                True,
            )
            for value, metrics in per_label.items():
                for key in SURFACE_KEYS:
                    self._surface[f"{key}/{names[value]}"].append(metrics[key])

    def on_validation_epoch_end(self) -> None:
        sums, counts = self.dice_sum, self.dice_count
        if self._trainer is not None and self.trainer.world_size > 1:
            sums = _gathered(self.all_gather(sums)).reshape(-1, len(self.dice_names)).sum(0)
            counts = _gathered(self.all_gather(counts)).reshape(-1, len(self.dice_names)).sum(0)
        values = (sums / counts.clamp_min(1)).tolist()  # the one host read of the epoch
        seen = (counts > 0).tolist()
        dice = {n: v for n, v, ok in zip(self.dice_names, values, seen, strict=True) if ok}
        # already reduced over processes: logged as they are
        for name, value in dice.items():
            self.log(f"val/dice/{name}", value, rank_zero_only=True)
        if dice:
            mean = float(np.mean(list(dice.values())))
            self.log("val/dice_mean", mean, prog_bar=True, rank_zero_only=True)
        for key, found in self._surface.items():
            if found:  # NaN when a structure is missing; averaged over processes
                self.log(
                    f"val/{key}",
                    float(np.nanmean(found)) if np.isfinite(found).any() else float("nan"),
                    sync_dist=True,
                )
        self._surface.clear()
        self.dice_sum.zero_()
        self.dice_count.zero_()
        if self._ema_in_net:
            self._swap_ema()  # back to the trained weights (checkpoints store the average)

    def on_train_epoch_end(self) -> None:
        """Under DDP, check that every process holds the same weights (logged as
        ``ddp/weight_spread``, the largest difference of per-tensor sums)."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return
        checksum = torch.stack([p.detach().double().sum() for p in self.net.parameters()])
        gathered = _gathered(self.all_gather(checksum))
        spread = float((gathered - gathered[0]).abs().max())
        self.log("ddp/weight_spread", spread, rank_zero_only=True)
        if spread > 1e-3:
            raise RuntimeError(f"DDP processes hold different weights (spread {spread:.3g})")

    def _stepping_batches(self) -> int:
        """Optimiser steps of the whole run, from the trainer when attached (it accounts for
        the number of processes, gradient accumulation and batch limits)."""
        if self._trainer is not None:
            try:
                steps = self.trainer.estimated_stepping_batches
            except (RuntimeError, AttributeError):  # no fit loop yet
                steps = None
            if steps and steps != float("inf"):
                return max(int(steps), 1)
        return self.total_steps

    def configure_optimizers(self) -> Any:
        o = dict(self.optim_cfg.get("optimizer") or {})
        s = dict(self.optim_cfg.get("scheduler") or {})
        self.total_steps = self._stepping_batches()
        optimizer = AdamP(
            self.net.parameters(),
            lr=float(self.optim_cfg["lr"]),
            betas=tuple(o.get("betas", (0.9, 0.999))),
            weight_decay=float(o.get("weight_decay", 0.0)),
            agc_clipping=o.get("agc_clipping", 0.01),
            demon=bool(o.get("demon", False)),
            total_steps=self.total_steps,
            use_gc=bool(o.get("use_gc", False)),
            adanorm=bool(o.get("adanorm", False)),
            nesterov=bool(o.get("nesterov", False)),
        )
        warmup = int(round(float(s.get("warmup_ratio", 0.05)) * self.total_steps))
        scheduler = warmup_cosine(
            optimizer, max(warmup, 1), self.total_steps, float(s.get("min_factor", 0.0))
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _gathered(value: object) -> torch.Tensor:
    """``LightningModule.all_gather`` of a tensor: a tensor (typed as any collection)."""
    assert isinstance(value, torch.Tensor)
    return value

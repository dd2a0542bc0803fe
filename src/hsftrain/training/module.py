"""The LightningModule: forward, forgiving loss, AdamP + warm-up cosine, per-label Dice."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch

from hsftrain.data.labels import group_table
from hsftrain.losses import FocalTverskyLoss, ForgivingLoss, group_probs
from hsftrain.models import build_model
from hsftrain.optim import AdamP, warmup_cosine


def dataset_tables(
    class_names: list[str],
    dataset_classes: Mapping[int, list[str]],
    dataset_ca: Mapping[int, str],
    forgiving: bool,
) -> dict[int, np.ndarray]:
    """Group table per dataset: granularity-aware when ``forgiving``, else the identity.

    Raises:
        LabelError: a dataset class that the model cannot produce.
        ValueError: without the forgiving loss, a dataset with more classes than the model.
    """
    tables = {}
    for d, names in dataset_classes.items():
        if forgiving:
            tables[d] = group_table(class_names, names, dataset_ca[d])
        else:
            if len(names) > len(class_names):
                raise ValueError(
                    f"dataset {d} has {len(names)} classes but the model {len(class_names)}: "
                    "raise models.hparams.out_channels or use the forgiving loss"
                )
            tables[d] = np.eye(len(class_names), dtype=np.float32)
    return tables


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
    """

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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # channels-last: 3D convolution backward is several times faster in this layout on CPU
        self.net = build_model(model_name, model_hparams).to(memory_format=torch.channels_last_3d)
        self.class_names = class_names
        self.optim_cfg = optim
        self.total_steps = max(int(total_steps), 1)
        self.set_datasets(dataset_classes, dataset_ca)
        self.surface_every = int(surface_every)
        self._val: dict[str, list[float]] = defaultdict(list)

    def set_datasets(
        self, dataset_classes: dict[int, list[str]], dataset_ca: dict[int, str]
    ) -> None:
        """(Re)build the loss for the given datasets' label schemes."""
        forgiving = bool(self.optim_cfg.get("use_forgiving_loss", True))
        tables = dataset_tables(self.class_names, dataset_classes, dataset_ca, forgiving)
        loss_cfg = dict(self.optim_cfg.get("loss") or {})
        self.loss = ForgivingLoss(
            {d: torch.from_numpy(t) for d, t in tables.items()}, FocalTverskyLoss(**loss_cfg)
        )
        self.dataset_classes = dataset_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, X, Y, Z)`` for images ``(B, 1, X, Y, Z)``."""
        return self.net(x.contiguous(memory_format=torch.channels_last_3d))

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        probs = torch.softmax(logits.float(), dim=1)
        return self.loss(probs, batch["label"], batch["dataset"]), probs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["image"].shape[0],
        )
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _surface_now(self) -> bool:
        if self.surface_every < 0 or self.trainer is None:
            return False
        epoch = self.current_epoch
        last = epoch >= (self.trainer.max_epochs or 0) - 1
        return last or (self.surface_every > 0 and (epoch + 1) % self.surface_every == 0)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, probs = self._step(batch)
        surface = self._surface_now()
        self.log(
            "val/epoch/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0]
        )
        for b in range(probs.shape[0]):
            d = int(batch["dataset"][b])
            names = self.dataset_classes[d]
            pred = group_probs(probs[b : b + 1], self.loss.table(d)).argmax(1)[0]
            ref = batch["label"][b]
            for value, name in enumerate(names):
                if value == 0:
                    continue
                p, r = pred == value, ref == value
                denom = p.sum() + r.sum()
                dice = 1.0 if denom == 0 else float(2 * (p & r).sum() / denom)
                self._val[name].append(dice)
            if surface:
                from hsftrain.evaluation.metrics import label_metrics

                spacing = batch["spacing"][b].tolist()
                per_label = label_metrics(
                    pred.cpu().numpy(), ref.cpu().numpy(), range(1, len(names)), spacing, True
                )
                for value, metrics in per_label.items():
                    for key in ("hd95_mm", "assd_mm"):
                        self._val[f"{key}/{names[value]}"].append(metrics[key])

    def on_validation_epoch_end(self) -> None:
        dice = {n: float(np.mean(v)) for n, v in self._val.items() if v and "/" not in n}
        for name, value in dice.items():
            self.log(f"val/dice/{name}", value)
        if dice:
            self.log("val/dice_mean", float(np.mean(list(dice.values()))), prog_bar=True)
        for key, values in self._val.items():
            if "/" in key and values:  # surface distances: NaN when a structure is missing
                self.log(
                    f"val/{key}",
                    float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"),
                )
        self._val.clear()

    def configure_optimizers(self) -> Any:
        o = dict(self.optim_cfg.get("optimizer") or {})
        s = dict(self.optim_cfg.get("scheduler") or {})
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

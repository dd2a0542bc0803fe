"""The LightningModule of a run: its class names, built from scratch or from the
pretrained checkpoint fine-tuning starts from (new head when the classes differ)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from hsftrain.containers import plain
from hsftrain.data.labels import LabelError, group_table
from hsftrain.data.labels import class_names as names_from_table
from hsftrain.data.subjects import Discovery
from hsftrain.errors import ConfigError
from hsftrain.finite import check_finite_state
from hsftrain.hub.fetch import fetch
from hsftrain.models import channels_last
from hsftrain.training.checkpoint import ModelInfo, read_checkpoint
from hsftrain.training.distributed import compile_enabled
from hsftrain.training.module import SegmentationModule

log = logging.getLogger(__name__)


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


def pretrained_path(cfg: DictConfig) -> Path:
    """Local path of ``finetuning.pretrained`` (fetched and verified when it is a url or a
    hub name, see :func:`hsftrain.hub.fetch.fetch`).

    Raises:
        ConfigError: ``finetuning.pretrained`` unset or unusable.
    """
    spec = cfg.finetuning.get("pretrained")
    if spec is None:
        raise ConfigError(
            "finetuning.pretrained must be set: a checkpoint path, or {url: ..., xxh3_64: ...}"
        )
    cache = cfg.finetuning.get("cache_dir")
    return fetch(plain(spec), Path(str(cache)) if cache else None)


#: A pretrained checkpoint: its path, network state dict and model description.
Pretrained = tuple[Path, dict[str, torch.Tensor], ModelInfo]


def read_pretrained(cfg: DictConfig) -> Pretrained:
    """The checkpoint fine-tuning starts from: path, network state and model description.

    Raises:
        ConfigError: ``finetuning.pretrained`` unset or unusable.
        NonFiniteError: the checkpoint holds NaN/Inf weights.
    """
    path = pretrained_path(cfg)
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


def ignored_hparams(cfg: DictConfig, info: ModelInfo) -> list[str]:
    """``models.hparams`` values given for a fine-tuning (changed from the default of the
    same models group) that the pretrained network does not have: fine-tuning keeps the
    pretrained network, so they are not used (``key=given (pretrained: value)``)."""
    from hsftrain.config import defaults_like

    defaults = defaults_like(cfg)
    if defaults is None:
        return []
    given, default = plain(cfg.models.hparams), plain(defaults.models.hparams)
    return [
        f"models.hparams.{key}={value} (pretrained: {info.hparams.get(key)})"
        for key, value in given.items()
        if value != default.get(key) and value != info.hparams.get(key)
    ]


def build_module(
    cfg: DictConfig, found: Discovery, total_steps: int, pretrained: Pretrained | None = None
) -> SegmentationModule:
    """The LightningModule for this run; from ``pretrained`` (weights, new head when the
    classes differ) when fine-tuning."""
    optim = plain(cfg.models)

    def make(name: str, hparams: dict[str, Any], names: list[str]) -> SegmentationModule:
        return SegmentationModule(
            name,
            hparams,
            names,
            found.dataset_classes,
            {s.index: s.ca_type for s in found.datasets},
            optim,
            total_steps,
            config=plain(cfg),
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
        channels_last(module.net)
        module.hparams["model_hparams"]["out_channels"] = len(names)
    log.info("fine-tuning from %s (%s)", path, info.name)
    return module

"""The LightningModule of a run: its class names, built from scratch or from the
pretrained checkpoint fine-tuning starts from (new head when the classes differ)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError
from hsftrain.core.nonfinite import check_finite_state
from hsftrain.data.labels import LabelError, group_table
from hsftrain.data.labels import class_names as names_from_table
from hsftrain.data.subjects import DatasetSpec, Discovery
from hsftrain.hub.fetch import fetch
from hsftrain.losses.tables import dataset_tables
from hsftrain.models import channels_last
from hsftrain.training.checkpoint import ModelInfo, read_checkpoint
from hsftrain.training.distributed import compile_enabled
from hsftrain.training.module import SegmentationModule
from hsftrain.training.settings import TrainingSettings

log = logging.getLogger(__name__)


def model_classes(
    cfg: DictConfig,
    found: Discovery,
    out_channels: int | None,
    key: str = "models.hparams.out_channels",
) -> list[str]:
    """The model's class names: ``models.labels_names``, or the finest dataset's names.

    Raises:
        ConfigError: ``out_channels`` (the config key ``key``) is not the number of classes
            of the data (a class no label map holds would never be trained).
    """
    if cfg.models.get("labels_names"):
        table = {int(k): str(v) for k, v in cfg.models.labels_names.items()}
        names = names_from_table(table)
    else:
        specs = {s.index: s for s in found.datasets}
        finest = max(
            found.dataset_classes,
            key=lambda d: (specs[d].ca_type == "1/2/3", len(found.dataset_classes[d])),
        )
        names = list(found.dataset_classes[finest])
    if out_channels is not None and out_channels != len(names):
        raise ConfigError(
            f"{key}={out_channels} but the data has {len(names)} classes, background included "
            f"({', '.join(names)}): set {key}={len(names)}, or null to take them from the data"
        )
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


def checkpoint_named(found: Discovery, pretrained: list[str]) -> dict[int, list[str]]:
    """Each dataset's classes, those of a dataset without ``labels_names`` (named
    ``label_<value>``) replaced by the checkpoint's names when they are as many: its label
    values are then the checkpoint's (e.g. its own corrected predictions)."""
    classes = dict(found.dataset_classes)
    for spec in found.datasets:
        names = classes.get(spec.index)
        if spec.labels_names is None and names is not None and len(names) == len(pretrained):
            classes[spec.index] = list(pretrained)
    return classes


def _unmapped(
    found: Discovery, classes: dict[int, list[str]], pretrained: list[str]
) -> DatasetSpec | None:
    """The first dataset whose ``classes`` the forgiving loss cannot map onto ``pretrained``."""
    for spec in found.datasets:
        try:
            group_table(pretrained, classes[spec.index], spec.ca_type)
        except LabelError:
            return spec
    return None


def finetune_classes(
    cfg: DictConfig, found: Discovery, out_channels: int | None, pretrained: list[str]
) -> list[str]:
    """Class names of a fine-tuned model (and so whether its head is kept).

    ``finetuning.out_channels`` null or the checkpoint's count keeps the checkpoint's
    classes (names and head) when they fit the data: datasets without ``labels_names`` and
    with as many classes take its names (:func:`checkpoint_named`, logged; ``found`` is
    updated); with the forgiving loss every dataset must map onto them (labels named like
    them, at any CA granularity), without it the data must have that many classes. When
    they do not fit, null gives a new head of the data's classes if their number differs.
    Another ``finetuning.out_channels`` is a new head and must be the data's number of
    classes. ``models.labels_names`` names the classes instead of the checkpoint.

    Raises:
        ConfigError: ``finetuning.out_channels`` that disagrees with the data, or named
            classes that disagree with the checkpoint's (the message says which key to set).
    """
    key = "finetuning.out_channels"
    named = bool(cfg.models.get("labels_names"))
    renamed = checkpoint_named(found, pretrained)
    unmapped: DatasetSpec | None = None
    if named:
        keepable = False
    elif bool(cfg.models.get("use_forgiving_loss", True)):
        keepable = (unmapped := _unmapped(found, renamed, pretrained)) is None
    else:
        keepable = len(model_classes(cfg, found, None)) == len(pretrained)
    p = len(pretrained)
    if (out_channels is None or out_channels == p) and not named:
        for spec in found.datasets:
            if renamed[spec.index] != found.dataset_classes[spec.index]:
                found.dataset_classes[spec.index] = renamed[spec.index]
                log.info(
                    "dataset %s: its unnamed classes (label values 1-%d) take the "
                    "checkpoint's names (%s)",
                    spec.name,
                    p - 1,
                    ", ".join(pretrained[1:]),
                )
        if keepable:
            return list(pretrained)
    data = model_classes(cfg, found, None)
    d = len(data)
    if out_channels is not None and out_channels != d and (named or out_channels != p):
        fix = f"set {key}={d}" + (" for a new head of them" if d != p else "")
        if keepable:
            keep = f"set {key}=null (or {p}) to keep the checkpoint's {p} classes and head"
            fix = keep if d == p else f"{fix}, or null to keep the checkpoint's {p}"
        raise ConfigError(
            f"{key}={out_channels} but the data has {d} classes, background included "
            f"({', '.join(data)}): {fix}"
        )
    if named or out_channels not in (None, p):
        return data  # a head of the data's classes (kept when as many as the checkpoint's)
    if d != p:
        if out_channels is None:
            return data  # another label scheme: a new head of the data's classes
        raise ConfigError(
            f"{key}={out_channels} keeps the checkpoint's classes ({', '.join(pretrained)}), "
            f"but the data's {d} classes ({', '.join(data)}) do not map onto them: set "
            f"{key}={d} for a new head of the data's classes, or null"
        )
    assert unmapped is not None  # as many classes: only the forgiving loss's names disagree
    theirs = ", ".join(found.dataset_classes[unmapped.index][1:])
    raise ConfigError(
        f"dataset {unmapped.name}'s classes ({theirs}) are not the checkpoint's "
        f"({', '.join(pretrained[1:])}): name them like the checkpoint's in "
        f"datasets.datasets.{unmapped.name}.labels_names to keep its head, or set "
        "models.use_forgiving_loss=false to train its head on the label values as they are"
    )


def ignored_hparams(cfg: DictConfig, info: ModelInfo) -> list[str]:
    """``models.hparams`` values given for a fine-tuning (changed from the default of the
    same models group) that the pretrained network does not have: fine-tuning keeps the
    pretrained network, so they are not used (``key=given (pretrained: value)``)."""
    from hsftrain.config.compose import defaults_like

    defaults = defaults_like(cfg)
    if defaults is None:
        return []
    given, default = plain(cfg.models.hparams), plain(defaults.models.hparams)
    return [
        f"models.hparams.{key}={value} (pretrained: {info.hparams.get(key)})"
        for key, value in given.items()
        if value != default.get(key) and value != info.hparams.get(key)
    ]


def run_classes(cfg: DictConfig, found: Discovery, pretrained: Pretrained | None) -> list[str]:
    """The model's class names for this run (:func:`model_classes` or, fine-tuning,
    :func:`finetune_classes`), checked against every dataset's classes as the loss will
    compare them: a run calls it once the data are discovered, before writing anything.

    Raises:
        ConfigError, LabelError: classes that disagree (the message names the key to set).
    """
    if pretrained is None:
        names = model_classes(cfg, found, plain(cfg.models.hparams).get("out_channels"))
    else:
        out = cfg.finetuning.get("out_channels")
        names = finetune_classes(cfg, found, int(out) if out else None, pretrained[2].class_names)
    ca = {s.index: s.ca_type for s in found.datasets}
    forgiving = bool(cfg.models.get("use_forgiving_loss", True))
    try:
        dataset_tables(names, found.dataset_classes, ca, forgiving, found.lacking_tables)
    except LabelError:
        raise
    except ValueError as err:  # more classes in a dataset than in the model
        raise ConfigError(str(err)) from err
    return names


def build_module(
    settings: TrainingSettings,
    found: Discovery,
    classes: list[str],
    total_steps: int,
    pretrained: Pretrained | None = None,
) -> SegmentationModule:
    """The LightningModule for this run, of the model's ``classes`` (:func:`run_classes`);
    from ``pretrained`` (weights, new head when the classes differ) when fine-tuning.

    Its hyper-parameters (what checkpoints store) are those of every earlier version:
    ``optim`` is the ``models`` group and ``config`` the whole config, as plain values."""
    network = settings.network

    def make(name: str, hparams: dict[str, Any], names: list[str]) -> SegmentationModule:
        return SegmentationModule(
            name,
            hparams,
            names,
            found.dataset_classes,
            {s.index: s.ca_type for s in found.datasets},
            dict(settings.config["models"]),
            total_steps,
            config=dict(settings.config),
            surface_every=settings.surface_every,
            compile=compile_enabled(network.compile, str(settings.trainer.accelerator)),
            lacking_tables=found.lacking_tables,
        )

    names = list(classes)
    if pretrained is None:
        hparams = {**network.hparams, "out_channels": len(names)}
        return make(network.name, hparams, names)
    path, state, info = pretrained
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


def module_for(
    cfg: DictConfig, found: Discovery, total_steps: int, pretrained: Pretrained | None = None
) -> SegmentationModule:
    """:func:`build_module` for a composed config (checked into settings, its classes
    found): how planning builds the module of each candidate config."""
    from hsftrain.training.validate import validate_training

    settings = validate_training(cfg, pretrained is not None)
    return build_module(
        settings, found, run_classes(cfg, found, pretrained), total_steps, pretrained
    )

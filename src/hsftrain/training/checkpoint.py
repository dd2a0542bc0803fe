"""Reading checkpoints without Lightning: network + label information.

Two kinds are read: hsftrain's own (``net.`` weights, the model description in
``hyper_parameters``) and hsf_train's, i.e. HSF's published foundation models (``_model.``
weights, no description: the network is :class:`~hsftrain.models.HSFResidualUNet3D`, its
shapes read from the weights, its other settings from the ``models`` config).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hsftrain.data.labels import HSF_MODEL_CLASSES, class_names
from hsftrain.models import Network, build_model
from hsftrain.models import hsf_arunet as hsf
from hsftrain.models.blocks import feature_sizes

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    """What a checkpoint says about its network."""

    name: str
    hparams: dict[str, Any]
    class_names: list[str]
    ca_mode: str
    config: dict[str, Any]


def read_checkpoint(
    path: str | Path, models: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    """State dict of the network (``net.`` or ``_model.`` prefix removed) and its
    :class:`ModelInfo`.

    Args:
        path: a checkpoint written by hsftrain, or by hsf_train (HSF's published models).
        models: the run's ``models`` config; for an hsf_train checkpoint its ``hparams``
            give the settings the weights do not fix when ``models.name`` is
            ``HSFResidualUNet3D`` (see :func:`hsf_train_hparams`). Unused for hsftrain's.

    Raises:
        ValueError: neither kind, or an hsf_train checkpoint of another network.
    """
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, not a torch file, ...
        raise ValueError(
            f"{path}: cannot be read as a PyTorch checkpoint ({type(err).__name__}: {err}); "
            "give a .ckpt written by `hsftrain train` or `finetune`"
        ) from err
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "model_name" not in hp:
        state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
        if isinstance(state, Mapping) and hsf.is_hsf_train_state(state):
            return _read_hsf_train(path, state, models)
        raise ValueError(
            f"{path}: not an hsftrain checkpoint (no model description in "
            "hyper_parameters); give a .ckpt written by `hsftrain train` or `finetune`"
        )
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    info = ModelInfo(
        name=hp["model_name"],
        hparams=dict(hp["model_hparams"]),
        class_names=list(hp["class_names"]),
        ca_mode=str(hp.get("ca_mode", "1/2/3")),
        config=dict(hp.get("config") or {}),
    )
    return state, info


def _read_hsf_train(
    path: str | Path, state: Mapping[str, torch.Tensor], models: Mapping[str, Any] | None
) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    weights = hsf.strip_prefix(state)
    try:
        shapes = hsf.shape_hparams(weights)
    except ValueError as err:
        raise ValueError(
            f"{path}: an hsf_train (HSF) checkpoint, but {err}: hsftrain reads hsf_train's "
            "ResidualUNet3D (modeltype ResidualUNet3D), e.g. HSF's arunet_* checkpoints"
        ) from err
    n_classes = shapes["out_channels"]
    names = (
        list(HSF_MODEL_CLASSES)
        if n_classes == len(HSF_MODEL_CLASSES)
        else class_names({}, n_classes)
    )
    info = ModelInfo(
        name=hsf.NAME,
        hparams=hsf_train_hparams(shapes, models, str(path)),
        class_names=names,
        ca_mode="1/2/3",
        config={},
    )
    log.info(
        "%s: hsf_train checkpoint, %s f_maps %s, %d levels, %d classes",
        path,
        info.name,
        shapes["f_maps"],
        shapes["num_levels"],
        n_classes,
    )
    return weights, info


def published_hparams() -> dict[str, Any]:
    """``hparams`` of the packaged ``models=hsf_arunet`` config (HSF 4.0.0's settings)."""
    from omegaconf import OmegaConf

    from hsftrain.config.compose import CONF_DIR
    from hsftrain.config.values import plain_dict

    cfg = OmegaConf.load(CONF_DIR / "models" / "hsf_arunet.yaml")
    return plain_dict(cfg.hparams)


def hsf_train_hparams(
    shapes: Mapping[str, Any], models: Mapping[str, Any] | None = None, source: str = ""
) -> dict[str, Any]:
    """The architecture of an hsf_train checkpoint, which stores none.

    The published settings (``models=hsf_arunet``), overridden by ``models.hparams`` when
    ``models.name`` is ``HSFResidualUNet3D``, then by what the weights' shapes fix
    (``shapes``, from :func:`hsftrain.models.hsf_arunet.shape_hparams`); a configured
    value the weights contradict is logged and ignored.
    """
    hparams = published_hparams()
    if models is not None and models.get("name") == hsf.NAME:
        configured = dict(models.get("hparams") or {})
        hparams.update(configured)
        for key, value in shapes.items():
            have = configured.get(key)
            if key == "f_maps" and have is not None:
                levels = int(shapes["num_levels"])
                same = feature_sizes(have, levels) == feature_sizes(value, levels)
            else:
                same = have is None or have == value
            if not same:
                log.warning(
                    "%s: the weights have %s=%s; models.hparams.%s=%s is ignored",
                    source or "checkpoint",
                    key,
                    value,
                    key,
                    have,
                )
    hparams.update(shapes)
    return hparams


def load_network(path: str | Path) -> tuple[Network, ModelInfo]:
    """Rebuild the network of a checkpoint with its trained weights (eval mode).

    An hsf_train checkpoint gets the published settings (see :func:`hsf_train_hparams`).
    """
    state, info = read_checkpoint(path)
    net = build_model(info.name, info.hparams)
    net.load_state_dict(state)
    return net.eval(), info

"""Reading hsftrain checkpoints without Lightning: network + label information."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hsftrain.models import build_model
from hsftrain.models.unet import UNet3D


@dataclass
class ModelInfo:
    """What a checkpoint says about its network."""

    name: str
    hparams: dict[str, Any]
    class_names: list[str]
    ca_mode: str
    config: dict[str, Any]


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    """State dict of the network (``net.`` prefix removed) and its :class:`ModelInfo`.

    Raises:
        ValueError: not an hsftrain checkpoint.
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
        if any(str(k).startswith("_model.") for k in state):
            raise ValueError(
                f"{path}: an hsf_train (HSF) checkpoint; its network (max-pooling encoder, "
                "normalised attention gates) is not hsftrain's, so it cannot be fine-tuned "
                "here: start from a checkpoint written by `hsftrain train` (e.g. on "
                "datasets=msd) or `finetune`"
            )
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


def load_network(path: str | Path) -> tuple[UNet3D, ModelInfo]:
    """Rebuild the network of a checkpoint with its trained weights (eval mode)."""
    state, info = read_checkpoint(path)
    net = build_model(info.name, info.hparams)
    net.load_state_dict(state)
    return net.eval(), info

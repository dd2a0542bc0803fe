"""Structured (channel) pruning: a U-Net with fewer feature channels per level.

Unstructured sparsity leaves the tensor shapes, so ONNX Runtime does the same work. Removing
whole channels gives a smaller *dense* network, which is what runs faster on a CPU.

The summation skips and residual additions tie channel indices across a whole level of
:class:`~hsftrain.models.unet.UNet3D`: the encoder output of level ``l``, the skip that
reaches the decoder, the decoder's upsampling output and its block output are added
channel by channel. So one set of kept channel indices is chosen per level and used for
every tensor of that level (the intermediate convolutions of a block too, for simplicity).
The attention gates' inner channels get their own set. Channels are ranked by the L1 norm
of the filters that produce them (each layer's norms divided by their mean, then summed
over the level's layers).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hsftrain.config.compose import ConfigError
from hsftrain.models.blocks import AttentionGate
from hsftrain.models.norms import SwitchNorm3d
from hsftrain.models.unet import MODELS, DecoderLevel, UNet3D, channels_last

log = logging.getLogger(__name__)

#: A channel "slot": ("input",), ("classes",), ("one",), ("level", l), ("concat", l),
#: ("inter", decoder index).
Slot = tuple[Any, ...]
NORM_TYPES = (SwitchNorm3d, nn.BatchNorm3d, nn.InstanceNorm3d)
CONV_TYPES = (nn.Conv3d, nn.ConvTranspose3d)


@dataclass
class ChannelPlan:
    """Which channels survive: one index set per level and per attention gate."""

    levels: list[torch.Tensor]
    inter: dict[int, torch.Tensor]

    @property
    def f_maps(self) -> list[int]:
        return [len(k) for k in self.levels]


def fold_masks(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with ``torch.nn.utils.prune`` reparametrisations folded in:
    ``X_orig * X_mask`` stored as ``X``, the masks dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("_mask") and key.removesuffix("_mask") + "_orig" in state:
            continue
        if key.endswith("_orig") and key.removesuffix("_orig") + "_mask" in state:
            base = key.removesuffix("_orig")
            out[base] = value * state[base + "_mask"]
        else:
            out[key] = value
    return out


def plain_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """``net``'s state dict with any pruning masks folded in (see :func:`fold_masks`)."""
    return fold_masks(net.state_dict())


def like_layout(new: nn.Module, reference: nn.Module) -> nn.Module:
    """Move ``new`` to ``reference``'s device and, when its conv weights are channels-last
    (as the training module keeps them), to that memory format too. Returns ``new``."""
    first = next(p for p in reference.parameters() if p.ndim == 5)
    new.to(first.device)
    if first.is_contiguous(memory_format=torch.channels_last_3d) and not first.is_contiguous():
        channels_last(new)
    return new


def require_prunable(net: nn.Module) -> UNet3D:
    """``net``, checked to be a layout structured pruning knows (hsftrain's U-Nets).

    Raises:
        ConfigError: another network, e.g. hsf_train's ARUnet (HSFResidualUNet3D), whose
            strided-conv downsampling keeps the channels of the level above.
    """
    if not isinstance(net, UNet3D):
        raise ConfigError(
            f"compression.structured cannot cut {type(net).__name__} (structured pruning "
            "knows hsftrain's ResidualUNet3D / UNet3D only): use compression.pruning "
            "(unstructured) or compression=none"
        )
    return net


def _block_slots(
    prefix: str, block: nn.Module, in_slot: Slot, out_slot: Slot
) -> dict[str, tuple[Slot, Slot]]:
    """(input slot, output slot) of every conv / norm in a DoubleConv or ResBlock."""
    slots: dict[str, tuple[Slot, Slot]] = {}
    for name in ("conv1", "conv2", "conv3"):
        seq = getattr(block, name, None)
        if seq is None:
            continue
        slots.update(
            _seq_slots(f"{prefix}.{name}", seq, in_slot if name == "conv1" else out_slot, out_slot)
        )
    return slots


def _seq_slots(
    prefix: str, seq: nn.Module, in_slot: Slot, out_slot: Slot
) -> dict[str, tuple[Slot, Slot]]:
    slots: dict[str, tuple[Slot, Slot]] = {}
    for name, module in seq.named_children():
        if isinstance(module, CONV_TYPES):
            slots[f"{prefix}.{name}"] = (in_slot, out_slot)
        elif isinstance(module, NORM_TYPES):
            slots[f"{prefix}.{name}"] = (out_slot, out_slot)
    return slots


def channel_slots(net: UNet3D) -> dict[str, tuple[Slot, Slot]]:
    """For each conv and norm module name of ``net``: its (input, output) channel slots.

    Raises:
        ConfigError: a network structured pruning does not support (see
            :func:`require_prunable`).
        TypeError: a module layout this function does not know (e.g. a custom network).
    """
    require_prunable(net)
    slots: dict[str, tuple[Slot, Slot]] = {}
    for level, encoder in enumerate(net.encoders):
        prefix = f"encoders.{level}"
        if level == 0:
            slots.update(_block_slots(prefix, encoder, ("input",), ("level", 0)))
        else:
            down, block = encoder[0], encoder[1]
            slots.update(_seq_slots(f"{prefix}.0", down, ("level", level - 1), ("level", level)))
            slots.update(_block_slots(f"{prefix}.1", block, ("level", level), ("level", level)))
    n = len(net.decoders)
    for i, decoder in enumerate(net.decoders):
        if not isinstance(decoder, DecoderLevel):
            raise TypeError(f"decoders.{i}: {type(decoder).__name__} is not a DecoderLevel")
        upper, lower = n - i, n - i - 1  # from level `upper` up to level `lower`
        prefix = f"decoders.{i}"
        slots[f"{prefix}.up"] = (("level", upper), ("level", lower))
        if isinstance(decoder.attention, AttentionGate):
            slots[f"{prefix}.attention.w_skip"] = (("level", lower), ("inter", i))
            slots[f"{prefix}.attention.w_gate"] = (("level", lower), ("inter", i))
            slots[f"{prefix}.attention.psi"] = (("inter", i), ("one",))
        joined = ("concat", lower) if decoder.skip == "concat" else ("level", lower)
        slots.update(_block_slots(f"{prefix}.block", decoder.block, joined, ("level", lower)))
    slots["head"] = (("level", 0), ("classes",))
    known = set(slots)
    for name, module in net.named_modules():
        if isinstance(module, CONV_TYPES + NORM_TYPES) and name not in known:
            raise TypeError(f"structured pruning does not know where {name} belongs")
    return slots


def _out_norms(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output channel's filter, divided by the layer's mean norm."""
    if isinstance(module, nn.ConvTranspose3d):
        norms = weight.abs().sum(dim=(0, 2, 3, 4))
    else:
        norms = weight.abs().flatten(1).sum(1)
    return norms / norms.mean().clamp_min(1e-12)


def plan_channels(
    net: UNet3D, ratio: float | Sequence[float], min_channels: int = 1
) -> ChannelPlan:
    """Choose the channels to keep: the top ``1 - ratio`` of each level by filter L1 norm.

    Args:
        ratio: fraction of channels removed, one value or one per level.
        min_channels: never keep fewer channels than this at a level.

    Raises:
        ValueError: a ratio outside ``[0, 1)``.
    """
    slots = channel_slots(net)
    state = plain_state_dict(net)
    modules = dict(net.named_modules())
    n_levels = len(net.encoders)
    ratios = (
        [float(ratio)] * n_levels if isinstance(ratio, int | float) else [float(r) for r in ratio]
    )
    if len(ratios) != n_levels or any(not 0 <= r < 1 for r in ratios):
        raise ValueError(
            f"compression.structured.ratio={ratio}: give one value in [0, 1) or {n_levels} of them"
        )
    scores: dict[Slot, torch.Tensor] = {}
    for name, (_, out_slot) in slots.items():
        module = modules[name]
        if not isinstance(module, CONV_TYPES) or out_slot[0] not in ("level", "inter"):
            continue
        norms = _out_norms(module, state[f"{name}.weight"].detach().float().cpu())
        scores[out_slot] = scores.get(out_slot, 0) + norms
    levels = []
    for level in range(n_levels):
        score = scores[("level", level)]
        keep = max(min_channels, int(round(len(score) * (1 - ratios[level]))))
        keep = min(keep, len(score))
        levels.append(torch.sort(torch.topk(score, keep).indices).values)
    inter = {}
    for i, decoder in enumerate(net.decoders):
        if isinstance(decoder.attention, AttentionGate):
            lower = n_levels - 2 - i
            keep = max(len(levels[lower]) // 2, 1)
            score = scores[("inter", i)]
            inter[i] = torch.sort(torch.topk(score, min(keep, len(score))).indices).values
    return ChannelPlan(levels, inter)


def _indices(slot: Slot, plan: ChannelPlan, full: int) -> torch.Tensor:
    kind = slot[0]
    if kind == "level":
        return plan.levels[slot[1]]
    if kind == "inter":
        return plan.inter[slot[1]]
    if kind == "concat":
        keep = plan.levels[slot[1]]
        return torch.cat([keep, keep + full // 2])
    return torch.arange(full)


def _slice(
    module: nn.Module, key: str, value: torch.Tensor, in_idx: Any, out_idx: Any
) -> torch.Tensor:
    """Slice one parameter/buffer of a conv or norm module to the kept channels."""
    if isinstance(module, nn.ConvTranspose3d):
        if key == "weight":
            return value[in_idx(value.shape[0])][:, out_idx(value.shape[1])]
        return value[out_idx(value.shape[0])]
    if isinstance(module, nn.Conv3d):
        if key == "weight":
            return value[out_idx(value.shape[0])][:, in_idx(value.shape[1])]
        return value[out_idx(value.shape[0])]
    if isinstance(module, SwitchNorm3d):
        if key in ("mean_weight", "var_weight"):
            return value
        return value[:, out_idx(value.shape[1])]
    if key == "num_batches_tracked":
        return value
    return value[out_idx(value.shape[0])]


def prune_channels(
    net: UNet3D, plan: ChannelPlan, hparams: Mapping[str, Any] | None = None
) -> tuple[UNet3D, dict[str, Any]]:
    """A new, smaller network holding the kept channel slices of ``net``.

    Args:
        net: the trained network (may carry ``torch.nn.utils.prune`` masks).
        plan: kept channels, from :func:`plan_channels`.
        hparams: the network's ``models.hparams`` (``f_maps`` is replaced by the new list).

    Returns:
        ``(smaller network, its hparams)``, the network in the same train/eval mode,
        ``requires_grad`` state, device and memory format (channels-last or not) as ``net``.
    """
    require_prunable(net)
    name = type(net).__name__
    old_f_maps = params_of_sizes(net)
    params = dict(hparams or _hparams_of(net))
    params["f_maps"] = plan.f_maps
    params["num_levels"] = len(plan.f_maps)
    new = MODELS[name](**params)
    slots = channel_slots(net)
    old_modules = dict(net.named_modules())
    state = plain_state_dict(net)
    new_state = {}
    for key, target in new.state_dict().items():
        module_name, _, leaf = key.rpartition(".")
        value = state[key]
        if module_name in slots:
            in_slot, out_slot = slots[module_name]
            sliced = _slice(
                old_modules[module_name],
                leaf,
                value,
                lambda full, s=in_slot: _indices(s, plan, full),
                lambda full, s=out_slot: _indices(s, plan, full),
            )
        else:
            sliced = value
        if sliced.shape != target.shape:
            raise RuntimeError(
                f"{key}: sliced to {tuple(sliced.shape)}, expected {tuple(target.shape)}"
            )
        new_state[key] = sliced.clone()
    new.load_state_dict(new_state)
    like_layout(new, net)
    # Same frozen / eval state as the original, module by module.
    new_modules = dict(new.named_modules())
    for module_name, module in old_modules.items():
        if module_name in new_modules:
            new_modules[module_name].train(module.training)
    old_params = dict(net.named_parameters())
    for key, param in new.named_parameters():
        src = old_params.get(key, old_params.get(key + "_orig"))
        if src is not None:
            param.requires_grad_(src.requires_grad)
    log.info(
        "structured pruning: f_maps %s -> %s (%d -> %d parameters)",
        old_f_maps,
        plan.f_maps,
        count_parameters(net),
        count_parameters(new),
    )
    return new, params


def params_of_sizes(net: UNet3D) -> list[int]:
    """Current channels per level of ``net``."""
    return [int(d.shape[0]) for d in _level_outputs(net)]


def _level_outputs(net: UNet3D) -> list[torch.Tensor]:
    outs = []
    for level, encoder in enumerate(net.encoders):
        block = encoder if level == 0 else encoder[1]
        outs.append(_weight(block.conv1[_conv_index(block.conv1)]))
    return outs


def _conv_index(seq: nn.Sequential) -> int:
    return next(i for i, m in enumerate(seq) if isinstance(m, nn.Conv3d))


def _weight(conv: nn.Module) -> torch.Tensor:
    return conv.weight if not hasattr(conv, "weight_orig") else conv.weight_orig


#: Module type -> its letter in a layer-order string (see hsftrain.models.blocks).
_LAYER_LETTERS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Conv3d, "c"),
    (SwitchNorm3d, "s"),
    (nn.BatchNorm3d, "b"),
    (nn.InstanceNorm3d, "i"),
    (nn.ReLU, "r"),
    (nn.LeakyReLU, "l"),
    (nn.ELU, "e"),
    (nn.GELU, "g"),
)


def _hparams_of(net: UNet3D) -> dict[str, Any]:
    """hparams that rebuild ``net``'s architecture (when the caller has none)."""
    first = net.encoders[0].conv1
    conv = first[_conv_index(first)]
    letters = [letter for m in first for kind, letter in _LAYER_LETTERS if isinstance(m, kind)]
    decoder = net.decoders[0] if len(net.decoders) else None
    return {
        "in_channels": int(conv.in_channels),
        "out_channels": int(net.head.out_channels),
        "f_maps": params_of_sizes(net),
        "num_levels": len(net.encoders),
        "layer_order": "".join(letters),
        "conv_kernel_size": int(conv.kernel_size[0]),
        "use_attention": bool(decoder is not None and decoder.attention is not None),
        "skip": getattr(net, "skip", "sum"),
    }


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (with prune reparametrisation counted once)."""
    return sum(v.numel() for k, v in plain_state_dict(net).items() if k in _param_names(net))


def _param_names(net: nn.Module) -> set[str]:
    return {k.removesuffix("_orig") for k, _ in net.named_parameters()}


def structured_prune(
    net: UNet3D,
    ratio: float | Sequence[float],
    hparams: Mapping[str, Any] | None = None,
    min_channels: int = 1,
) -> tuple[UNet3D, dict[str, Any], ChannelPlan]:
    """Rank, choose and cut in one call: ``(smaller network, its hparams, the plan)``."""
    plan = plan_channels(net, ratio, min_channels)
    new, params = prune_channels(net, plan, hparams)
    return new, params, plan

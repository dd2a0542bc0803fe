"""The ``augmentation`` config group read once: :class:`AugmentationSpec`.

Every reader of the group takes its values from here: the ``torch`` training backend
(:mod:`hsftrain.data.augment`), the ``torchio`` one (:mod:`hsftrain.data.transforms`) and
test-time augmentation (:mod:`hsftrain.inference.tta`, which must stay torch-free: this
module imports neither torch nor torchio).

A transform absent from the config, or with ``p: 0``, is off. A parameter absent or null
takes its default in :data:`DEFAULTS`, the values of the packaged
``conf/augmentation/default.yaml`` (``elastic.locked_borders``, which that file does not
set, is torchio's 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError

#: Parameters of each transform and their defaults (a transform's ``p`` defaults to 0: off).
DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "flip": {"axes": ("LR",)},
        "affine": {"scales": (0.9, 1.1), "degrees": 10, "translation": 3},
        "elastic": {"num_control_points": 7, "max_displacement": 3, "locked_borders": 2},
        "motion": {"degrees": 5, "translation": 5, "num_transforms": 2},
        "blur": {"std": (0.0, 0.5)},
        "gamma": {"log_gamma": (-0.3, 0.3)},
        "noise": {"std": (0.0, 0.05)},
    }
)
#: Keys of the group that are not transforms.
OTHER_KEYS: dict[str, Any] = {"backend": "torch", "device": "auto", "test_time_num_aug": 4}
#: Anatomical axis names of a RAS+ (canonical) volume -> array dimension.
AXES = {"L": 0, "R": 0, "LR": 0, "RL": 0, "A": 1, "P": 1, "AP": 1, "PA": 1}
AXES.update({"S": 2, "I": 2, "SI": 2, "IS": 2})


def flip_dims(axes: Sequence[Any]) -> list[int]:
    """Array dimensions of ``flip.axes`` (anatomical letters of RAS+ data, or 0/1/2).

    Raises:
        ConfigError: an axis that is neither.
    """
    dims = []
    for axis in axes:
        key = str(axis).upper()
        if key in ("0", "1", "2"):
            dims.append(int(key))
        elif key in AXES:
            dims.append(AXES[key])
        else:
            raise ConfigError(
                f"augmentation.flip.axes: {axis!r} is not an axis; use LR, AP, SI or 0, 1, 2"
            )
    return sorted(set(dims))


def _frozen(value: Any) -> Any:
    """Lists as tuples (a spec is immutable and hashable)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _probability(key: str, value: Any) -> float:
    """``value`` of ``augmentation.<name>.p``: a number in [0, 1].

    Raises:
        ConfigError: anything else (the message of the training config checks).
    """
    number = float("nan")
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            pass
    if not (math.isfinite(number) and 0 <= number <= 1):
        raise ConfigError(f"`{key}`={value!r}: must be a finite number >= 0 and <= 1")
    return number


@dataclass(frozen=True)
class Transform:
    """One transform of the group: its probability and every parameter (defaults filled)."""

    name: str
    p: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def on(self) -> bool:
        return self.p > 0

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    @classmethod
    def from_config(cls, name: str, section: Any) -> Transform:
        """``augmentation.<name>`` (a mapping, or null: off).

        Raises:
            ConfigError: not a mapping, an unknown parameter, a bad ``p`` or flip axis.
        """
        if section is None:
            return cls(name, 0.0, dict(DEFAULTS[name]))
        if not isinstance(section, Mapping):
            raise ConfigError(
                f"augmentation.{name}={section!r}: give a mapping, e.g. "
                f"augmentation.{name}.p=0.1 (p: 0 turns it off)"
            )
        allowed = ["p", *DEFAULTS[name]]
        for key in section:
            if key not in allowed:
                raise ConfigError(
                    f"augmentation.{name}.{key}: not a parameter of {name}; use one of "
                    f"{', '.join(allowed)}"
                )
        p = section.get("p")
        p = 0.0 if p is None else _probability(f"augmentation.{name}.p", p)
        params = {
            key: _frozen(default if section.get(key) is None else section[key])
            for key, default in DEFAULTS[name].items()
        }
        if name == "flip":
            flip_dims(params["axes"])
        return cls(name, p, params)


@dataclass(frozen=True)
class AugmentationSpec:
    """The ``augmentation`` group: one :class:`Transform` per name of :data:`DEFAULTS`."""

    transforms: Mapping[str, Transform] = field(
        default_factory=lambda: ({name: Transform.from_config(name, None) for name in DEFAULTS})
    )
    backend: str = OTHER_KEYS["backend"]
    device: str = OTHER_KEYS["device"]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | AugmentationSpec | None) -> AugmentationSpec:
        """Read the ``augmentation`` group (a DictConfig or a plain mapping; None: all off).

        Raises:
            ConfigError: an unknown key, a probability outside [0, 1], a bad flip axis
                (each names the key).
        """
        if isinstance(cfg, AugmentationSpec):
            return cfg
        cfg = plain(cfg) or {}  # a DictConfig as dicts and lists
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"augmentation={cfg!r}: give the augmentation group (a mapping)")
        for key in cfg:
            if key not in DEFAULTS and key not in OTHER_KEYS:
                raise ConfigError(
                    f"augmentation.{key}: not an augmentation key; use one of "
                    f"{', '.join([*OTHER_KEYS, *DEFAULTS])}"
                )
        transforms = {name: Transform.from_config(name, cfg.get(name)) for name in DEFAULTS}
        backend = str(cfg.get("backend") or OTHER_KEYS["backend"])
        device = str(cfg.get("device") or OTHER_KEYS["device"])
        return cls(transforms, backend, device)

    def __getitem__(self, name: str) -> Transform:
        return self.transforms[name]

    @property
    def enabled(self) -> bool:
        """Whether any transform is on."""
        return any(t.on for t in self.transforms.values())

    def flip_only(self) -> AugmentationSpec:
        """This spec with every transform off but ``flip``, applied always (``p: 1``)."""
        flip = self["flip"]
        transforms = {name: Transform.from_config(name, None) for name in DEFAULTS}
        transforms["flip"] = Transform("flip", 1.0, flip.params)
        return AugmentationSpec(transforms, self.backend, self.device)

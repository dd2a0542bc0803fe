"""The one reader of dotted config keys, and the one grammar of device lists.

:func:`get_value` reads ``"models.hparams.f_maps"`` from a ``DictConfig`` or a plain
mapping, as plain Python: an absent key gives ``default``; a ``???`` value raises or gives
``default`` (``missing``); an interpolation that does not resolve raises a
:class:`~hsftrain.core.errors.ConfigError` naming the key, or gives its text
(``unresolved="text"``, to compare two configs as written).

:func:`parse_devices` reads ``hardware.devices`` and ``lightning.devices``: null or
``"auto"``, an int (a count for Lightning, one GPU id for ``segment``), a list of ids, or
a string ``"0,1"`` (ids; ``"2"``: an int). It returns a typed :class:`Devices`; each caller
checks the forms it supports and raises its own message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError

#: What :func:`get_value` returns by default for a key the config does not have.
ABSENT: Any = object()


def get_value(
    cfg: DictConfig | Mapping[str, Any],
    key: str,
    default: Any = ABSENT,
    *,
    missing: Literal["error", "default"] = "error",
    unresolved: Literal["error", "text"] = "error",
) -> Any:
    """Plain value of dotted ``key`` (``default`` when the config has no such key).

    Args:
        missing: what a ``???`` value (or one below a ``???`` group) gives: a ConfigError
            or ``default``.
        unresolved: what an interpolation that does not resolve gives: a ConfigError or
            its text (``"${...}"``).

    Raises:
        ConfigError: a ``???`` value (``missing="error"``) or an interpolation that does
            not resolve (``unresolved="error"``), naming ``key``.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg) if cfg else {})
    try:
        value = OmegaConf.select(cfg, key, default=default, throw_on_missing=True)
        return plain(value)
    except Exception as err:  # a ??? value, an interpolation that does not resolve
        from omegaconf.errors import MissingMandatoryValue

        if isinstance(err, MissingMandatoryValue):
            if missing == "default":
                return default
        elif unresolved == "text":
            node: Any = OmegaConf.to_container(cfg, resolve=False)
            for part in key.split("."):
                node = node.get(part, default) if isinstance(node, Mapping) else default
            return node
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"`{key}`: {first}") from err


class KeyReader:
    """``read(key, default=None)``: :func:`get_value` of one config, where absent and ``???``
    values give ``default`` (how ``segment`` reads its optional keys)."""

    def __init__(self, cfg: DictConfig | Mapping[str, Any]) -> None:
        self.cfg = cfg

    def __call__(self, key: str, default: Any = None) -> Any:
        return get_value(self.cfg, key, default, missing="default")


def value_as_written(cfg: DictConfig | Mapping[str, Any], key: str) -> Any:
    """Value of dotted ``key`` to compare two configs: None when absent or ``???``, the
    text of an interpolation that does not resolve (never raises)."""
    return get_value(cfg, key, None, missing="default", unresolved="text")


@dataclass(frozen=True)
class Devices:
    """A parsed device setting: exactly one of ``auto``, ``count`` or ``ids`` is set.

    Attributes:
        auto: null or ``"auto"``: the caller's default.
        count: an int (``2``, ``-1``, ``"2"``): how many devices for Lightning, one GPU id
            for ``segment``.
        ids: a list of ids (``[0, 1]``, ``"0,1"``, ``"1,"``).
    """

    auto: bool = False
    count: int | None = None
    ids: tuple[int, ...] | None = None


def _int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"not an integer: {value!r}")
    return int(str(value).strip()) if isinstance(value, str) else int(value)


def parse_devices(value: Any) -> Devices:
    """``value`` of ``hardware.devices`` / ``lightning.devices`` as a :class:`Devices`.

    Raises:
        ValueError: not one of the forms above (an empty list, a bool, a word, a list
            with anything but integers); callers turn it into their ConfigError.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return Devices(auto=True)
    if isinstance(value, str) and "," in value:
        parts = [p for p in value.split(",") if p.strip()]
        if not parts:
            raise ValueError(f"no device ids in {value!r}")
        return Devices(ids=tuple(_int(p) for p in parts))
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("an empty list of devices")
        return Devices(ids=tuple(_int(v) for v in value))
    try:
        return Devices(count=_int(value))
    except (TypeError, ValueError):
        raise ValueError(f"not a device setting: {value!r}") from None

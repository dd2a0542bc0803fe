"""OmegaConf values as plain Python, and the dotted keys of a nested mapping.

One implementation for every layer that receives config values (``DictConfig`` from the
command line, plain mappings from tests and stored checkpoints): the light ``hub`` and
``inference`` packages included (omegaconf only).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def plain(value: Any) -> Any:
    """``value`` with OmegaConf containers turned into dicts and lists (interpolations
    resolved); anything else is returned as it is.

    Raises:
        omegaconf.errors.InterpolationResolutionError: an interpolation that does not
            resolve.
    """
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def plain_dict(value: Any) -> dict[str, Any]:
    """A mapping value (``DictConfig`` or plain) as a new ``dict`` with string keys.

    Raises:
        TypeError: ``value`` is not a mapping.
    """
    value = plain(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def leaves(
    value: Any, prefix: str = "", collapsed: tuple[str, ...] = ()
) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every leaf of a nested mapping below ``prefix``.

    Empty mappings and the mappings named in ``collapsed`` are leaves themselves.
    """
    if isinstance(value, Mapping) and value and prefix not in collapsed:
        for key, item in value.items():
            yield from leaves(item, f"{prefix}.{key}" if prefix else str(key), collapsed)
    else:
        yield prefix, value

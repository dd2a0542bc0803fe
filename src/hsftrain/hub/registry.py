"""Named models: ``presets/models.yaml`` (name -> ``{url, xxh3_64, ...}``).

An entry names a published file by ``url``, or a file bundled with hsftrain by ``asset``
(a path under the package's ``assets/`` folder); either way its ``xxh3_64`` is checked.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError

REGISTRY_PATH = Path(__file__).parent / "presets" / "models.yaml"
REQUIRED_KEYS = ("xxh3_64",)
#: Where ``asset:`` entries point: files shipped inside the package.
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
#: An xxh3_64 digest as registries and specs write it: 16 lowercase hex characters.
HASH_RE = re.compile(r"^[0-9a-f]{16}$")


def load_registry(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """Registry entries by name, each with at least ``url`` and ``xxh3_64``.

    Args:
        path: registry YAML (default: the packaged ``presets/models.yaml``).

    Raises:
        ConfigError: an entry without ``url`` or with a malformed ``xxh3_64`` (named).
    """
    return copy.deepcopy(_load(Path(path) if path is not None else REGISTRY_PATH))


@functools.lru_cache(maxsize=8)
def _load(path: Path) -> dict[str, dict[str, Any]]:
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of model names to entries")
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: entry `{name}` must be a mapping with url and xxh3_64")
        missing = [key for key in REQUIRED_KEYS if not entry.get(key)]
        if not entry.get("url") and not entry.get("asset"):
            missing.insert(0, "url (or asset)")
        if missing:
            raise ConfigError(f"{path}: entry `{name}` lacks {', '.join(missing)}")
        if not HASH_RE.match(str(entry["xxh3_64"])):
            raise ConfigError(
                f"{path}: `{name}.xxh3_64` must be 16 lowercase hex characters, "
                f"got {entry['xxh3_64']!r}"
            )
    return {str(name): dict(entry) for name, entry in data.items()}


def resolve(name_or_spec: Any) -> Any:
    """The fetch spec for a registry name; any other spec is returned as a plain value.

    An existing local path takes precedence over a registry entry of the same name.
    ``DictConfig`` mappings come back as plain dicts. Pass the result to
    :func:`hsftrain.hub.fetch`.
    """
    if isinstance(name_or_spec, str):
        if not Path(name_or_spec).expanduser().exists():
            registry = _load(REGISTRY_PATH)
            if name_or_spec in registry:
                return fetch_spec(registry[name_or_spec])
        return name_or_spec
    name_or_spec = plain(name_or_spec)
    if isinstance(name_or_spec, Mapping):
        return dict(name_or_spec)
    return name_or_spec


def fetch_spec(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The fetch spec of a registry entry: ``{url, xxh3_64}``, or ``{path, xxh3_64}`` for a
    bundled ``asset``."""
    if entry.get("asset"):
        return {"path": str(ASSETS_DIR / str(entry["asset"])), "xxh3_64": entry["xxh3_64"]}
    return dict(entry)

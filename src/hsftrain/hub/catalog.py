"""What the hub offers: registry models and segmentation presets, and fetching them ahead.

Used by ``hsftrain hub list`` and ``hsftrain hub fetch``: on a cluster whose compute nodes
have no internet access, fetch the models once on a login node into the shared cache
(``$HSFTRAIN_CACHE``), then ``segment`` and ``finetune`` find them there, verified.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsftrain.config.compose import CONF_DIR, ConfigError
from hsftrain.hub.fetch import cache_path, fetch
from hsftrain.hub.registry import ASSETS_DIR, load_registry

PRESETS_DIR = CONF_DIR / "segmentation"


@dataclass(frozen=True)
class ModelEntry:
    """One registry model and whether the cache already holds its file."""

    name: str
    version: str
    kind: str
    description: str
    cached: Path | None


@dataclass(frozen=True)
class PresetEntry:
    """One segmentation preset: its description and model specs (registry names or others)."""

    name: str
    description: str
    models: list[Any]


def models(cache_dir: str | os.PathLike[str] | None = None) -> list[ModelEntry]:
    """Registry models, with the cached file when one is there (not re-hashed here)."""
    out = []
    for name, entry in load_registry().items():
        if entry.get("asset"):  # bundled with hsftrain: always there
            path = ASSETS_DIR / str(entry["asset"])
        else:
            path = cache_path(str(entry["url"]), str(entry["xxh3_64"]), cache_dir)
        out.append(
            ModelEntry(
                name,
                str(entry.get("version", "")),
                str(entry.get("kind", "")),
                str(entry.get("description", "")),
                path if path.is_file() else None,
            )
        )
    return out


def presets() -> list[PresetEntry]:
    """The packaged segmentation presets (``segmentation=<name>``)."""
    import yaml

    out = []
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        specs = data.get("models") or {}
        listed = list(specs.values()) if isinstance(specs, dict) else list(specs)
        out.append(PresetEntry(path.stem, str(data.get("description", "")), listed))
    return out


def describe_spec(spec: Any) -> str:
    """Short text for a model spec: the registry name, or the file/URL it names."""
    if isinstance(spec, dict):
        spec = spec.get("path") or spec.get("url") or spec
    text = str(spec)
    return re.sub(r"\$\{hsftrain_assets:([^}]*)\}", r"<hsftrain assets>/\1", text)


def fetch_ahead(
    names: Sequence[str], cache_dir: str | os.PathLike[str] | None = None
) -> list[tuple[str, Path]]:
    """Download (or find, verified) registry models and every model of the named presets.

    Args:
        names: registry model names and/or segmentation preset names.
        cache_dir: the cache to fill (default: the hub's, ``$HSFTRAIN_CACHE`` if set).

    Returns:
        ``(registry name, local file)`` for each model, in order, without repeats.

    Raises:
        ConfigError: a name that is neither a registry model nor a preset with registry
            models (the message lists the valid names).
        HashMismatchError, DownloadError: as :func:`hsftrain.hub.fetch`.
    """
    registry = load_registry()
    by_preset = {p.name: p for p in presets()}
    wanted: list[str] = []
    for name in names:
        if name in registry:
            found = [name]
        elif name in by_preset:
            found = [m for m in by_preset[name].models if isinstance(m, str) and m in registry]
            if not found:
                raise ConfigError(
                    f"preset {name!r} has no hub models to fetch (its models are local files "
                    "or given on the command line)"
                )
        else:
            raise ConfigError(
                f"{name!r} is neither a hub model nor a segmentation preset; models: "
                f"{', '.join(registry)}; presets: {', '.join(by_preset)}"
            )
        wanted += [m for m in found if m not in wanted]
    return [(m, fetch(m, cache_dir=cache_dir)) for m in wanted]

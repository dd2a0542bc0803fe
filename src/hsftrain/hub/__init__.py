"""Model hub: fetch model files by path, URL or registry name, verified by xxh3_64."""

from hsftrain.hub.fetch import (
    DownloadError,
    HashMismatchError,
    cache_name,
    default_cache_dir,
    fetch,
    file_hash,
    hash_spec,
)
from hsftrain.hub.registry import REGISTRY_PATH, load_registry, resolve

__all__ = [
    "REGISTRY_PATH",
    "DownloadError",
    "HashMismatchError",
    "cache_name",
    "default_cache_dir",
    "fetch",
    "file_hash",
    "hash_spec",
    "load_registry",
    "resolve",
]

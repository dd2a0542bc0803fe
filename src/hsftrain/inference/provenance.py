"""What made an output: the hsftrain version, the models (file name and xxh3_64) and the
preset, as the provenance columns of every volumes table and in the BIDS
``dataset_description.json`` (``GeneratedBy``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from hsftrain import __version__
from hsftrain.hub.fetch import file_hash

#: Where the code lives (``GeneratedBy.CodeURL``).
CODE_URL = "https://github.com/clementpoiret/hsf_train"


@functools.lru_cache(maxsize=64)
def _hash(path: str, size: int, mtime_ns: int) -> str:
    return file_hash(path)


def model_hashes(paths: Sequence[Path]) -> list[tuple[str, str]]:
    """``(file name, xxh3_64)`` of each model file (hashed once per process)."""
    out = []
    for path in paths:
        stat = Path(path).stat()
        out.append((Path(path).name, _hash(str(path), stat.st_size, stat.st_mtime_ns)))
    return out


def preset_name(description: str) -> str:
    """The ``preset`` column: the preset's ``segmentation.description`` (``custom`` when
    it has none)."""
    return " ".join(description.split()) or "custom"


def columns(paths: Sequence[Path], description: str) -> dict[str, str]:
    """The provenance columns of a volumes row."""
    return {
        "hsftrain_version": __version__,
        "models": ";".join(f"{name}:{digest}" for name, digest in model_hashes(paths)),
        "preset": preset_name(description),
    }


def generated_by(paths: Sequence[Path], description: str) -> list[dict[str, object]]:
    """``GeneratedBy`` of a BIDS ``dataset_description.json``."""
    return [
        {
            "Name": "hsftrain",
            "Version": __version__,
            "CodeURL": CODE_URL,
            "Description": f"hsftrain segment, preset: {preset_name(description)}",
            "Models": [{"Name": n, "xxh3_64": d} for n, d in model_hashes(paths)],
            "Preset": preset_name(description),
        }
    ]

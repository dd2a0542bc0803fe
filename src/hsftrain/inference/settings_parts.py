"""Parts of the ``segment`` settings read and checked on their own: the ``hardware`` keys,
the ``checks`` thresholds and the multispectral (T1 + T2) settings
(:func:`hsftrain.inference.settings.settings_from_config` gathers them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsftrain.config.keys import KeyReader, parse_devices
from hsftrain.core.errors import ConfigError
from hsftrain.inference import bids
from hsftrain.inference.contract import Checks
from hsftrain.inference.engines import ENGINES, model_specs, parse_providers


@dataclass
class Multispectral:
    """How a subject's T2 is found, registered and fused with its T1 (``files.t2_pattern``
    and the ``multispectral`` keys)."""

    t2_pattern: str
    t2_models: list[tuple[str, Any]] | None = None  # None: the T1 models segment the T2 too
    t2_space: bool = False
    registration_mm: float = 2.0
    iterations: int = 100
    min_quality: float = 0.05
    t2_weight: float = 1.0


def as_int(key: str, value: Any, low: int) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        out = low - 1
    if isinstance(value, bool) or out < low or (isinstance(value, float) and value != out):
        raise ConfigError(f"{key}={value!r}: must be an integer >= {low}")
    return out


def gpu_ids(value: Any) -> list[int] | None:
    """``hardware.devices`` (:func:`~hsftrain.config.keys.parse_devices`): null or auto
    (None), one GPU id, or a list of them (``[0,1]``, ``"0,1"``).

    Raises:
        ConfigError: anything else, or a negative id.
    """
    try:
        devices = parse_devices(value)
    except ValueError:
        devices = None
    if devices is not None and devices.auto:
        return None
    ids = None if devices is None else list(devices.ids or (devices.count,))
    if ids is None or any(i is None or i < 0 for i in ids):
        raise ConfigError(
            f"hardware.devices={value!r}: give GPU ids, e.g. hardware.devices=[0,1] (workers "
            "are spread over them), or null"
        )
    return ids  # type: ignore[return-value]


def _weight(value: Any) -> float:
    """``multispectral.t2_weight``: a number > 0.

    Raises:
        ConfigError: anything else.
    """
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = -1.0
    if isinstance(value, bool) or not 0 < weight < float("inf"):
        raise ConfigError(
            f"multispectral.t2_weight={value!r}: must be a number > 0 (1: a T2 prediction "
            "counts as much as a T1 one; 3: three times as much)"
        )
    return weight


def _threshold(get: KeyReader, key: str, default: float, low: float, high: float) -> float | None:
    """``checks.<key>``: null (check off) or a number in ``[low, high]``.

    Raises:
        ConfigError: anything else (names the key).
    """
    value = get(f"checks.{key}", default)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not low <= number <= high:
        raise ConfigError(
            f"checks.{key}={value!r}: must be a number from {low:g} to {high:g}, or null to "
            f"turn the check off (default {default:g})"
        )
    return number


def read_checks(get: KeyReader) -> Checks:
    """The ``checks`` thresholds (see :mod:`hsftrain.inference.contract`).

    Raises:
        ConfigError: a value out of range (names the key).
    """
    defaults = Checks()
    inf = float("inf")
    empty = get("checks.empty_class", defaults.empty_class)
    if not isinstance(empty, bool):
        raise ConfigError(
            f"checks.empty_class={empty!r}: use true (flag a crop where a class has no voxel) "
            "or false"
        )
    return Checks(
        contrast_tolerance=_threshold(get, "contrast_tolerance", 0.5, 0.0, inf),
        volume_factor=_threshold(get, "volume_factor", 3.0, 1.0, inf),
        max_asymmetry=_threshold(get, "max_asymmetry", 0.5, 0.0, 2.0),
        max_uncertainty=_threshold(get, "max_uncertainty", 0.3, 0.0, 1.0),
        empty_class=empty,
    )


def read_multispectral(get: KeyReader, selection: bids.Selection | None) -> Multispectral | None:
    """The multispectral settings when ``files.t2_pattern`` is set (or, for a BIDS input,
    ``files.suffix=[T1w,T2w]``).

    Raises:
        ConfigError: an absolute ``files.t2_pattern`` or a bad ``multispectral`` value.
    """
    pattern = get("files.t2_pattern")
    if selection is not None:
        pattern = "*_T2w.nii[.gz] of the T1w's session" if selection.with_t2 else None
    if not pattern:
        return None
    if Path(str(pattern)).is_absolute():
        raise ConfigError(
            f"files.t2_pattern={pattern!r}: give a glob relative to each T1's folder, e.g. "
            "files.t2_pattern='{id}_T2w.nii.gz' ({id}: the T1's name minus the fixed end "
            "of files.pattern)"
        )
    t2_paths = get("multispectral.t2_model_paths")
    registration_mm = get("multispectral.registration_mm", 2.0)
    try:
        registration_mm = float(registration_mm)
    except (TypeError, ValueError):
        registration_mm = -1.0
    if not registration_mm > 0:
        raise ConfigError(
            f"multispectral.registration_mm={get('multispectral.registration_mm')!r}: "
            "must be a voxel size in mm > 0, e.g. 2"
        )
    min_quality = get("multispectral.min_quality", 0.05)
    try:
        min_quality = float(min_quality)
    except (TypeError, ValueError):
        raise ConfigError(
            f"multispectral.min_quality={min_quality!r}: must be a number (0 turns the check off)"
        ) from None
    return Multispectral(
        t2_pattern=str(pattern),
        t2_models=model_specs(t2_paths) if t2_paths else None,
        t2_space=bool(get("multispectral.t2_space", False)),
        registration_mm=registration_mm,
        iterations=as_int("multispectral.iterations", get("multispectral.iterations", 100), 1),
        min_quality=min_quality,
        t2_weight=_weight(get("multispectral.t2_weight", 1.0)),
    )


def choice(get: KeyReader, key: str, default: str, options: Sequence[str]) -> str:
    """``key`` as one of ``options``.

    Raises:
        ConfigError: another value.
    """
    value = str(get(key, default))
    if value not in options:
        raise ConfigError(f"{key}={value!r}: use one of {', '.join(options)}")
    return value


def read_engine(get: KeyReader) -> dict[str, Any]:
    """The ``hardware`` keys of :class:`Settings` (engine, providers, batch, threads).

    Raises:
        ConfigError: an unknown engine or a batch size < 1.
    """
    engine = choice(get, "hardware.engine", "onnxruntime", ENGINES)
    engine_settings = get("hardware.engine_settings", {}) or {}
    batch_size = int(engine_settings.get("batch_size", 1) or 1)
    if batch_size < 1:
        raise ConfigError("hardware.engine_settings.batch_size must be >= 1")
    return {
        "engine": engine,
        "providers": parse_providers(engine_settings.get("execution_providers")),
        "batch_size": batch_size,
        "intra_op_num_threads": int(engine_settings.get("intra_op_num_threads", 0) or 0),
        "inter_op_num_threads": int(engine_settings.get("inter_op_num_threads", 0) or 0),
        "jobs": as_int("hardware.jobs", get("hardware.jobs", 1), 1),
        "devices": gpu_ids(get("hardware.devices")),
    }

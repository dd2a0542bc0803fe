"""The validated ``segment`` configuration (:class:`Settings`), checked before anything runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hsftrain.config.compose import ConfigError
from hsftrain.config.keys import KeyReader, parse_devices
from hsftrain.data.augmentation_spec import AugmentationSpec
from hsftrain.data.labels import CA_TYPES
from hsftrain.inference import bids
from hsftrain.inference.boxes import FovSettings
from hsftrain.inference.contract import Checks
from hsftrain.inference.engines import ENGINES, Provider, model_specs, parse_providers
from hsftrain.inference.fusion import FUSIONS
from hsftrain.inference.resample import MODES as RESAMPLE_MODES
from hsftrain.inference.roiloc import MODES
from hsftrain.inference.shards import Shard, choose_shard

log = logging.getLogger(__name__)


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


@dataclass
class Settings:
    """The validated ``segment`` configuration."""

    root: Path
    pattern: str | None
    mask_patterns: list[str]
    output_dir: Path | None
    overwrite: bool
    volumes_csv: Path
    roiloc: dict[str, Any]
    models: list[tuple[str, Any]]
    models_path: str | None
    ca_mode: str
    fusion: str
    num_aug: int
    augmentation: AugmentationSpec
    providers: list[Provider]
    batch_size: int
    intra_op_num_threads: int
    inter_op_num_threads: int
    seed: int = 0
    qc: bool = True
    save_crops: bool = True
    largest_component: bool = True
    resample_mode: str = "auto"
    resample_tolerance: float = 0.25
    shard: Shard | None = None
    jobs: int = 1
    devices: list[int] | None = None
    multispectral: Multispectral | None = None
    description: str = ""
    checks: Checks = field(default_factory=Checks)
    #: metadata for models whose file lacks a key, by name in ``segmentation.models``
    model_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``files.bids=true``: what the run takes from the BIDS dataset ``root``; else None
    bids: bids.Selection | None = None

    #: ``files.layout``: hsf or bids (:mod:`hsftrain.inference.layout`)
    layout: str = "hsf"
    #: ``hardware.engine``: auto, onnxruntime or openvino (:data:`engines.ENGINES`)
    engine: str = "onnxruntime"
    #: ``save_probabilities``: also write each crop's mean class probabilities
    save_probabilities: bool = False

    @property
    def table(self) -> Path:
        """The volumes table this run writes: ``volumes.csv``, or its shard's table."""
        return self.shard.table(self.volumes_csv) if self.shard else self.volumes_csv


def _int(key: str, value: Any, low: int) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        out = low - 1
    if isinstance(value, bool) or out < low or (isinstance(value, float) and value != out):
        raise ConfigError(f"{key}={value!r}: must be an integer >= {low}")
    return out


def _gpu_ids(value: Any) -> list[int] | None:
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


def _checks(get: KeyReader) -> Checks:
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


def _model_metadata(get: KeyReader, shortcut: bool) -> dict[str, dict[str, Any]]:
    """``segmentation.model_metadata``: ``{model name: {metadata key: value}}`` (none when
    the models come from ``model_paths``: they are not the preset's).

    Raises:
        ConfigError: not a mapping of mappings.
    """
    value = get("segmentation.model_metadata")
    if shortcut or not value:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise ConfigError(
            f"segmentation.model_metadata={value!r}: give {{model name: {{metadata key: "
            "value}}}, the names as in segmentation.models"
        )
    return {str(name): dict(meta) for name, meta in value.items()}


def _multispectral(get: KeyReader, selection: bids.Selection | None) -> Multispectral | None:
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
        iterations=_int("multispectral.iterations", get("multispectral.iterations", 100), 1),
        min_quality=min_quality,
        t2_weight=_weight(get("multispectral.t2_weight", 1.0)),
    )


@dataclass(frozen=True)
class _Files:
    """What ``files.*`` says: the inputs and where the results go."""

    root: Path
    pattern: str | None
    masks: list[str]
    selection: bids.Selection | None
    output_dir: Path | None
    volumes: Path
    layout: str


def _files(get: KeyReader) -> _Files:
    """The ``files`` keys, output paths checked (nothing is created).

    Raises:
        ConfigError: ``files.path`` or ``files.pattern`` unset, an output path that cannot
            be written.
    """
    root = get("files.path")
    if not root:
        raise ConfigError("`files.path` must be set: the folder (or file) of MRIs to segment")
    root_path = Path(str(root)).expanduser()
    pattern = get("files.pattern")
    selection = bids.selection(get("files", {}) or {}, root_path)
    if selection is None and root_path.is_dir() and not pattern:
        raise ConfigError(
            "`files.pattern` must be set: a glob below files.path, e.g. files.pattern='**/*T1w.nii.gz'"
        )
    masks = get("files.mask_pattern") or []
    masks = [masks] if isinstance(masks, str) else [str(m) for m in masks]
    output_dir = get("files.output_dir")
    out = Path(str(output_dir)).expanduser() if output_dir else None
    if selection is not None:
        out = out or root_path / "derivatives" / "hsftrain"
        bids.check_output(root_path, out)
    base = out if out else (root_path if root_path.is_dir() else root_path.parent)
    volumes_csv = get("files.volumes_csv")
    from hsftrain.inference.layout import choose_layout

    layout = choose_layout(get("files.layout"), bool(get("files.bids", False)))
    table_name = "volumes.tsv" if layout == "bids" else "volumes.csv"
    volumes = Path(str(volumes_csv)).expanduser() if volumes_csv else base / table_name
    from hsftrain.config.checks import check_output_dir, check_output_file

    if out is not None:
        check_output_dir(out, "files.output_dir")
    if volumes_csv:
        check_output_file(volumes, "files.volumes_csv", example="volumes.csv")
    elif not out:  # results go next to the inputs
        check_output_dir(base, "files.output_dir (unset: results go next to the MRIs)")
    pattern = str(pattern) if pattern else None
    return _Files(root_path, pattern, masks, selection, out, volumes, layout)


def _choice(get: KeyReader, key: str, default: str, options: Sequence[str]) -> str:
    """``key`` as one of ``options``.

    Raises:
        ConfigError: another value.
    """
    value = str(get(key, default))
    if value not in options:
        raise ConfigError(f"{key}={value!r}: use one of {', '.join(options)}")
    return value


def _tta(get: KeyReader, fusion: str, n_models: int) -> tuple[int, AugmentationSpec]:
    """``segmentation.tta`` / ``test_time_num_aug``: augmented views per model and how
    they are drawn (``tta=flip``: the plain view and its mirror, no random draw).

    Raises:
        ConfigError: a bad ``segmentation.tta``, a negative count or augmentation key.
    """
    num_aug = get("segmentation.test_time_num_aug")
    if num_aug is None:
        num_aug = get("augmentation.test_time_num_aug", 0)
    tta = get("segmentation.tta", True)
    spec = AugmentationSpec.from_config(get("augmentation", {}) or {})
    if str(tta).lower() == "flip":
        # deterministic: the plain view and its mirror along the training flip axes (all
        # flipped at once), fused with the rest; no random draw
        spec, num_aug = spec.flip_only(), 1
        if fusion == "vote" and n_models == 1:
            log.warning(
                "segmentation.tta=flip with segmentation.fusion=vote: one model gives two "
                "views, whose disagreements tie; segmentation.fusion=mean averages them"
            )
    elif isinstance(tta, bool) or tta is None:
        num_aug = int(num_aug or 0) if tta else 0
    else:
        raise ConfigError(f"segmentation.tta={tta!r}: use true, false or flip")
    if num_aug < 0:
        raise ConfigError(f"segmentation.test_time_num_aug={num_aug}: must be >= 0")
    return num_aug, spec


def _engine(get: KeyReader) -> dict[str, Any]:
    """The ``hardware`` keys of :class:`Settings` (engine, providers, batch, threads).

    Raises:
        ConfigError: an unknown engine or a batch size < 1.
    """
    engine = _choice(get, "hardware.engine", "onnxruntime", ENGINES)
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
        "jobs": _int("hardware.jobs", get("hardware.jobs", 1), 1),
        "devices": _gpu_ids(get("hardware.devices")),
    }


def _segmentation(get: KeyReader) -> dict[str, Any]:
    """The ``roiloc``, models, ``segmentation`` and ``resample`` keys of :class:`Settings`.

    Raises:
        ConfigError: a value out of its choices or range (names the key).
    """
    roiloc = get("roiloc", {}) or {}
    mode = str(roiloc.get("mode", "auto"))
    if mode not in MODES:
        raise ConfigError(f"roiloc.mode={mode!r}: use one of {', '.join(MODES)}")
    FovSettings.from_config(roiloc)  # roiloc.model_fov*: checked before any subject
    shortcut = get("model_paths")
    models = model_specs(shortcut if shortcut else get("segmentation.models"))
    ca_mode = get("segmentation.ca_mode", "")
    ca_mode = "" if ca_mode is None else str(ca_mode)
    if ca_mode not in ("", *CA_TYPES):
        raise ConfigError(
            f"segmentation.ca_mode={ca_mode!r}: use one of '', {', '.join(map(repr, CA_TYPES))}"
        )
    fusion = _choice(get, "segmentation.fusion", "vote", FUSIONS)
    num_aug, augmentation = _tta(get, fusion, len(models))
    resample_mode = _choice(get, "resample.mode", "auto", RESAMPLE_MODES)
    tolerance = float(get("resample.tolerance", 0.25))
    if not tolerance >= 0:
        raise ConfigError(f"resample.tolerance={tolerance}: must be >= 0 (e.g. 0.25)")
    return {
        "roiloc": roiloc,
        "models": models,
        "models_path": get("segmentation.models_path"),
        "ca_mode": ca_mode,
        "fusion": fusion,
        "num_aug": num_aug,
        "augmentation": augmentation,
        "resample_mode": resample_mode,
        "resample_tolerance": tolerance,
        "largest_component": bool(get("segmentation.largest_component", True)),
        "description": str(get("segmentation.description", "") or ""),
        "model_metadata": _model_metadata(get, bool(shortcut)),
    }


def settings_from_config(cfg: DictConfig) -> Settings:
    """Check the ``segment`` config and gather what a run needs.

    Raises:
        ConfigError: a missing or invalid key (the message names it).
    """
    get = KeyReader(cfg)
    files = _files(get)
    return Settings(
        root=files.root,
        pattern=files.pattern,
        mask_patterns=files.masks,
        output_dir=files.output_dir,
        overwrite=bool(get("files.overwrite", False)),
        volumes_csv=files.volumes,
        **_segmentation(get),
        **_engine(get),
        seed=int(get("seed", 0) or 0),
        qc=bool(get("qc", True)),
        save_crops=bool(get("save_crops", True)),
        shard=choose_shard(get("files.shard")),
        multispectral=_multispectral(get, files.selection),
        checks=_checks(get),
        layout=files.layout,
        save_probabilities=bool(get("save_probabilities", False)),
        bids=files.selection,
    )

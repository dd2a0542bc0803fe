"""The validated ``segment`` configuration (:class:`Settings`), checked before anything runs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hsftrain.config.compose import ConfigError
from hsftrain.config.keys import KeyReader
from hsftrain.data.augmentation_spec import AugmentationSpec
from hsftrain.data.labels import CA_TYPES
from hsftrain.inference import bids
from hsftrain.inference.boxes import FovSettings
from hsftrain.inference.contract import Checks
from hsftrain.inference.engines import Provider, model_specs
from hsftrain.inference.fusion import FUSIONS
from hsftrain.inference.resample import MODES as RESAMPLE_MODES
from hsftrain.inference.roiloc import MODES
from hsftrain.inference.settings_parts import (
    Multispectral,
    choice,
    read_checks,
    read_engine,
    read_multispectral,
)
from hsftrain.inference.shards import Shard, choose_shard

log = logging.getLogger(__name__)


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
    fusion = choice(get, "segmentation.fusion", "vote", FUSIONS)
    num_aug, augmentation = _tta(get, fusion, len(models))
    resample_mode = choice(get, "resample.mode", "auto", RESAMPLE_MODES)
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
        **read_engine(get),
        seed=int(get("seed", 0) or 0),
        qc=bool(get("qc", True)),
        save_crops=bool(get("save_crops", True)),
        shard=choose_shard(get("files.shard")),
        multispectral=read_multispectral(get, files.selection),
        checks=read_checks(get),
        layout=files.layout,
        save_probabilities=bool(get("save_probabilities", False)),
        bids=files.selection,
    )

"""Models + test-time augmentation + subfield merging + fusion, for one crop at a time."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.config.compose import ConfigError
from hsftrain.data.augmentation_spec import AugmentationSpec
from hsftrain.data.labels import CA_MERGES, merge_lut, merge_probs
from hsftrain.inference.contract import Contract
from hsftrain.inference.engines import Engine, Provider, resolve_model
from hsftrain.inference.fusion import Fusion, keep_largest_component
from hsftrain.inference.openvino_engine import auto_engine, open_engine
from hsftrain.inference.preprocess import pad_to_multiple, unpad, z_normalize
from hsftrain.inference.resample import model_spacing
from hsftrain.inference.settings import Settings
from hsftrain.inference.tta import sample_augmentations

log = logging.getLogger(__name__)


@dataclass
class CropResult:
    """Fused segmentation of one crop."""

    label_map: np.ndarray  # (X, Y, Z) uint8
    uncertainty: np.ndarray | None  # (X, Y, Z) float32 in [0, 1], None for one prediction
    n_predictions: int
    #: (C, X, Y, Z) float32 mean class probabilities (``save_probabilities``), else None
    probabilities: np.ndarray | None = None


def _ca_names(ca_mode: str) -> set[str]:
    """Class names a granularity merges or produces (``CA2``, ``CA3``, ``CA2/3`` for 1/23)."""
    table = CA_MERGES.get(ca_mode, {})
    return set(table) | set(table.values())


@dataclass(frozen=True)
class SegmenterOptions:
    """How a :class:`Segmenter` predicts and fuses.

    Attributes:
        augmentation: the ``augmentation`` group (flip/affine/elastic) or its spec.
        num_aug: augmented predictions per model, on top of the plain one.
        fusion: "vote" or "mean".
        ca_mode: subfield granularity ("" keeps the model's classes).
        batch_size: augmented copies stacked per model call.
        largest_component: keep only the largest connected foreground component of each
            crop (one hippocampus per crop).
        probabilities: also keep each crop's mean class probabilities.
    """

    augmentation: Mapping[str, Any] | AugmentationSpec | None = None
    num_aug: int = 0
    fusion: str = "vote"
    ca_mode: str = ""
    batch_size: int = 1
    largest_component: bool = False
    probabilities: bool = False


class Segmenter:
    """Models + test-time augmentation + subfield merging + fusion, for one crop at a time.

    Args:
        engines: loaded models, all with the same class names.
        options: TTA, fusion, subfields, batch size (:class:`SegmenterOptions`).

    Raises:
        ConfigError: the models disagree on their classes, or an invalid
            ``augmentation`` key.
    """

    def __init__(self, engines: Sequence[Engine], options: SegmenterOptions | None = None) -> None:
        options = options or SegmenterOptions()
        probabilities, ca_mode = options.probabilities, options.ca_mode
        self.probabilities = probabilities
        self.engines = list(engines)
        names = self.engines[0].labels_names
        for engine in self.engines[1:]:
            if engine.labels_names != names:
                raise ConfigError(
                    f"segmentation.models disagree on their classes: {self.engines[0].path.name} "
                    f"has {names}, {engine.path.name} has {engine.labels_names}"
                )
        self.model_names = list(names)
        self.ca_mode = ca_mode
        lut, merged = merge_lut(self.model_names, ca_mode or "1/2/3")
        self.names = list(merged) if ca_mode else list(names)
        # "" or a granularity that merges nothing here: no work per prediction
        self.merges = bool(ca_mode) and bool((lut != np.arange(len(lut))).any())
        if CA_MERGES.get(ca_mode) and not self.merges and not set(names) & _ca_names(ca_mode):
            log.warning(
                "segmentation.ca_mode=%r cannot apply to the classes of %s (%s): nothing is "
                "merged, the model's own classes are written",
                ca_mode,
                self.engines[0].path.name,
                ", ".join(n for n in names[1:]),
            )
        self.augmentation = AugmentationSpec.from_config(options.augmentation)
        self.num_aug = int(options.num_aug)
        self.fusion = options.fusion
        self.batch_size = max(1, int(options.batch_size))
        self.largest_component = bool(options.largest_component)
        #: voxel size (mm, RAS axes) the models were trained at; None: unknown
        metadata = [getattr(e, "metadata", {}) or {} for e in self.engines]
        self.spacing = model_spacing(metadata)
        #: what the models were trained on (contrast, volumes), checked on every crop
        self.contract = Contract.from_metadata(metadata)

    @classmethod
    def from_settings(cls, engines: Sequence[Engine], settings: Settings) -> Segmenter:
        """The segmenter a ``segment`` run uses: its TTA, fusion, ca_mode and batch size."""
        options = SegmenterOptions(
            settings.augmentation,
            settings.num_aug,
            settings.fusion,
            settings.ca_mode,
            settings.batch_size,
            settings.largest_component,
            settings.save_probabilities,
        )
        return cls(engines, options)

    @property
    def predictions_per_crop(self) -> int:
        return len(self.engines) * (1 + self.num_aug)

    def predictions(
        self,
        image: np.ndarray,
        zooms: Sequence[float],
        rng: np.random.Generator,
        advance: Callable[[int], None] | None = None,
    ) -> Iterator[np.ndarray]:
        """Every prediction (models x views) of a canonical ``(X, Y, Z)`` crop (raw
        intensities), one at a time: class probabilities ``(C, X, Y, Z)`` on the crop's
        grid, augmentations undone, subfields merged (``ca_mode``)."""
        normalized = z_normalize(image)
        # each model gets the padding it was trained with: the image minimum for hsftrain
        # models (hsftrain.data.transforms.fit_shape), zeros for others (HSF's models);
        # each view is augmented before it is padded, so that the padding stays where
        # the plain view has it (a mirrored padded crop had an odd padding on the other side)
        values = {
            m: float(normalized.min()) if m else 0.0
            for m in {e.pads_with_minimum for e in self.engines}
        }
        augmentations = sample_augmentations(
            self.augmentation, self.num_aug, normalized.shape, zooms, rng
        )
        prepared: dict[bool, tuple[int, ...]] = {}
        for start in range(0, len(augmentations), self.batch_size):
            chunk = augmentations[start : start + self.batch_size]
            views = np.stack([a.apply(normalized) for a in chunk])[:, None]
            inputs = {}
            for key, value in values.items():  # pads the last three (spatial) axes
                inputs[key], crop = pad_to_multiple(views, 8, value)
            shapes = {k: v.shape for k, v in inputs.items()}
            if shapes != prepared:  # the first chunk, or a shorter last one
                prepare_engines(self.engines, shapes)
                prepared = shapes
            outputs = []  # per model: (views, C, X, Y, Z) on the padded grid
            for engine in self.engines:
                outputs.append(engine.predict(inputs[engine.pads_with_minimum]))
                if advance:
                    advance(len(chunk))
            for view, augmentation in enumerate(chunk):
                # every model's classes of a view mapped back in one resampling
                backs = augmentation.invert(np.stack([unpad(o[view], crop) for o in outputs]))
                for back in backs:
                    yield merge_probs(back, self.model_names, self.ca_mode) if self.merges else back

    def finish(self, label_map: np.ndarray) -> np.ndarray:
        """Post-processing of a fused label map (largest component when configured)."""
        return keep_largest_component(label_map) if self.largest_component else label_map

    def segment_crop(
        self,
        image: np.ndarray,
        zooms: Sequence[float],
        rng: np.random.Generator,
        advance: Callable[[int], None] | None = None,
    ) -> CropResult:
        """Segment a canonical ``(X, Y, Z)`` crop (raw intensities): every prediction fused."""
        fusion = Fusion(self.fusion)
        for probs in self.predictions(image, zooms, rng, advance):
            fusion.add(probs)
        uncertainty = fusion.uncertainty() if fusion.count > 1 else None
        probabilities = fusion.mean_probs() if self.probabilities else None
        return CropResult(self.finish(fusion.label_map()), uncertainty, fusion.count, probabilities)


def prepare_engines(engines: Sequence[Engine], shapes: Mapping[bool, tuple[int, ...]]) -> None:
    """Every engine ready for its input shape (``shapes`` by ``pads_with_minimum``), several
    at a time: OpenVINO compiles a new shape on about one core, so an ensemble meeting a new
    crop shape compiles its models side by side (once per shape; later calls return at once)."""
    if len(engines) == 1:
        engines[0].prepare(shapes[engines[0].pads_with_minimum])
        return
    workers = min(len(engines), max(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda e: e.prepare(shapes[e.pads_with_minimum]), engines))


class ProgressHook:
    """Progress callbacks: a new crop starts (``start``), predictions are done (``advance``)."""

    def __init__(self, progress: Any, task: Any) -> None:
        self.progress = progress
        self.task = task

    def start(self, description: str, total: int) -> None:
        self.progress.reset(self.task, total=total, description=f"predictions {description}")

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


def resolve_models(models: Sequence[tuple[str, Any]], models_path: str | None) -> list[Path]:
    """Local paths of the configured models (downloaded and verified when needed).

    Raises:
        ConfigError: a model that cannot be resolved (names its key).
    """
    return [resolve_model(name, spec, models_path) for name, spec in models]


def with_device(providers: Sequence[Provider], device: int | None) -> list[Provider]:
    """``providers`` with the GPU providers' ``device_id`` (CUDA, TensorRT) set to ``device``."""
    if device is None:
        return list(providers)
    return [
        replace(p, options={**p.options, "device_id": int(device)})
        if p.name in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        else p
        for p in providers
    ]


def load_engines(
    settings: Settings,
    paths: Sequence[Path] | None = None,
    threads: int | None = None,
    device: int | None = None,
    models: Sequence[tuple[str, Any]] | None = None,
    quiet: bool = False,
) -> list[Engine]:
    """Load every configured model (resolving it first unless ``paths`` are given) on the
    engine ``hardware.engine`` asks for (:func:`hsftrain.inference.openvino_engine.open_engine`).

    Metadata keys a model file lacks are taken from the preset's ``model_metadata`` entry of
    the same name (the configured models only, not ``models``).

    Args:
        threads: intra-op threads, OpenVINO's threads (None: ``hardware.engine_settings``).
        device: the GPU the CUDA provider runs on (None: the provider's own setting).
        models: the ``(name, spec)`` to load (default: ``settings.models``).
        quiet: log each model at debug level (worker processes), not info.

    Raises:
        ConfigError: a model that cannot be resolved.
        ModelError: a model that cannot be used (names the file and why).
    """
    preset = settings.model_metadata if models is None else {}
    models = list(settings.models if models is None else models)
    if paths is None:
        paths = resolve_models(models, settings.models_path)
    engines = []
    engine_name = auto_engine(settings.engine, 1 + settings.num_aug)
    for (name, _), path in zip(models, paths, strict=True):
        engine = open_engine(
            engine_name,
            path,
            with_device(settings.providers, device),
            batch_size=settings.batch_size,
            intra_op_num_threads=settings.intra_op_num_threads if threads is None else threads,
            inter_op_num_threads=settings.inter_op_num_threads,
        )
        (log.debug if quiet else log.info)(
            "model %s: %s on %s", name, path, ", ".join(engine.providers)
        )
        defaults = preset.get(name)
        if defaults:  # the preset's metadata for a model file that lacks it; the file wins
            engine.metadata = {**defaults, **engine.metadata}
        engines.append(engine)
    return engines

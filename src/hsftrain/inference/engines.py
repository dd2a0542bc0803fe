"""Inference engines (the shared checks, ONNX Runtime) and model resolution (local paths or
hub downloads). The OpenVINO engine and the choice between engines live in
:mod:`hsftrain.inference.openvino_engine`.

A model is any ONNX file with one input ``(B, 1, X, Y, Z)`` and one output ``(B, C, X, Y, Z)``
of class probabilities (hsftrain exports name them ``cropped_hippocampus`` and
``segmented_hippocampus``; other names work too). Class names come from the model's
``labels_names`` metadata; without it, a model with the six outputs of the published HSF
models gets :data:`hsftrain.data.labels.HSF_MODEL_CLASSES`, one with eight
:data:`hsftrain.data.labels.SUBFIELDS` (head and tail added), any other ``label_<i>``.

Every model is checked when it is loaded (:meth:`Engine.check_contract`): one input
of rank 5 with one channel, an output ``(B, C, X, Y, Z)`` on a test image, finite values,
and class names in its metadata that match ``C`` (otherwise its volumes would be written
under the wrong names). A prediction with NaN or Inf values is refused too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.config.values import plain
from hsftrain.core.errors import ConfigError, NonFiniteError, UserError
from hsftrain.core.onnx_metadata import decode_metadata
from hsftrain.data.labels import HSF_MODEL_CLASSES, SUBFIELDS, class_names

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
#: ``hardware.engine``: auto (OpenVINO on a CPU for runs with test-time augmentation, when
#: installed; else ONNX Runtime: :func:`hsftrain.inference.openvino_engine.auto_engine`) or one of them
ENGINES: tuple[str, ...] = ("auto", "onnxruntime", "openvino")
#: Spatial size of the test image a model is run on when loaded (dynamic axes).
PROBE_SIZE = 16


class ModelError(UserError, RuntimeError):
    """A model file that cannot be used for segmentation; names the file and why."""


def model_specs(models: Any) -> list[tuple[str, Any]]:
    """Normalise ``segmentation.models`` (or the ``models`` shortcut) to ``[(name, spec)]``.

    Accepted forms: ``{name: spec}`` or a list of specs, where a spec is a local path, a
    hub registry name (``hsftrain/hub/presets/models.yaml``), ``{path: ..., xxh3_64: ...}``
    or ``{url: ..., xxh3_64: ...}``.

    Raises:
        ConfigError: no model, or an entry that is none of the above.
    """
    models = plain(models)
    if isinstance(models, str):
        models = [models]
    if isinstance(models, Mapping):
        items = [(str(k), v) for k, v in models.items()]
    elif isinstance(models, Sequence):
        items = []
        for i, spec in enumerate(models):
            name = Path(str(spec)).name if isinstance(spec, str | Path) else f"model_{i}"
            items.append((name, spec))
    else:
        items = []
    if not items:
        raise ConfigError(
            "no model configured: choose a preset (segmentation=single_fast, ...) or give "
            "model_paths=[/path/to/model.onnx] or segmentation.models='{name: {path: ...}}'"
        )
    for name, spec in items:
        ok = isinstance(spec, str | Path) or (
            isinstance(spec, Mapping) and ("path" in spec or "url" in spec)
        )
        if not ok:
            raise ConfigError(
                f"segmentation.models.{name} = {spec!r}: give a path, a registry name, "
                "{path: ...} or {url: ..., xxh3_64: ...}"
            )
    return items


def resolve_model(name: str, spec: Any, cache_dir: str | Path | None = None) -> Path:
    """Local path of a model through :func:`hsftrain.hub.fetch` (paths are verified when a
    hash is given; urls and registry names are downloaded once into the cache).

    Raises:
        ConfigError: the file, url or registry name cannot be resolved (names the key).
    """
    from hsftrain.hub.fetch import fetch

    try:
        return Path(fetch(spec, cache_dir=cache_dir))
    except ConfigError as err:
        raise ConfigError(f"segmentation.models.{name}: {err}") from err
    except (OSError, ValueError) as err:
        raise ConfigError(f"segmentation.models.{name}: {err}") from err


@dataclass(frozen=True)
class Provider:
    """An ONNX Runtime execution provider and its options."""

    name: str
    options: dict[str, Any]


def parse_providers(providers: Any) -> list[Provider]:
    """``["CUDAExecutionProvider", ["CPUExecutionProvider", {...}], {name: opts}]`` -> list."""
    out = []
    for entry in plain(providers) or DEFAULT_PROVIDERS:
        if isinstance(entry, str):
            out.append(Provider(entry, {}))
        elif isinstance(entry, Sequence) and entry and isinstance(entry[0], str):
            options = entry[1] if len(entry) > 1 else {}
            out.append(Provider(entry[0], dict(options) if isinstance(options, Mapping) else {}))
        elif isinstance(entry, Mapping) and len(entry) == 1:
            ((name, opts),) = entry.items()
            out.append(Provider(str(name), dict(opts or {})))
        else:
            raise ConfigError(
                f"hardware.engine_settings.execution_providers entry {entry!r}: use a name "
                "or [name, {option: value}]"
            )
    return out


def available_providers(requested: Sequence[Provider]) -> list[Provider]:
    """Requested providers this ONNX Runtime build has, in order (CPU as a last resort)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    kept = []
    for provider in requested:
        if provider.name in have:
            kept.append(provider)
        else:
            log.info("%s is not available in this onnxruntime build: skipping it", provider.name)
    if not kept:
        log.info("no requested execution provider is available: using CPUExecutionProvider")
        kept = [Provider("CPUExecutionProvider", {})]
    return kept


class Engine:
    """What every engine shares: the model's contract, class names, metadata and the
    batched prediction with its checks. A subclass sets ``path``, ``batch_size``,
    ``metadata`` and ``providers`` (a description for the log), implements
    :meth:`input_shapes` and :meth:`run`, then calls :meth:`_check`."""

    path: Path
    batch_size: int
    metadata: dict[str, Any]
    providers: list[str]
    output_classes: int
    labels_names: list[str]
    outputs_logits: bool | None

    def input_shapes(self) -> list[tuple[str, list[int | None]]]:
        """``[(name, shape)]`` of the model's inputs, None for a dynamic axis."""
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output for a float32 batch ``(B, 1, X, Y, Z)``."""
        raise NotImplementedError

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Get ready for batches of ``shape`` (an engine that compiles per shape compiles
        it now; may run in a thread beside other engines' ``prepare``). Nothing by default."""

    def _check(self) -> None:
        """Check the model (contract, class names); called at the end of ``__init__``."""
        self.output_classes = self.check_contract()
        self.labels_names = self._labels_names()
        self.outputs_logits = None  # decided on the first prediction

    def check_contract(self) -> int:
        """Check the model's inputs and outputs on a test image; returns its class count.

        Raises:
            ModelError: not one single-channel rank-5 input, an output that is not
                ``(B, C, X, Y, Z)`` with C >= 2, or a model that fails on the test image.
            NonFiniteError: the model outputs NaN or Inf.
        """
        inputs = self.input_shapes()
        if len(inputs) != 1:
            raise ModelError(
                f"{self.path}: the model has {len(inputs)} inputs "
                f"({', '.join(name for name, _ in inputs)}); hsftrain segment runs models with "
                "one input, an image (B, 1, X, Y, Z)"
            )
        shape = inputs[0][1]
        if len(shape) != 5 or shape[1] not in (None, 1):
            raise ModelError(
                f"{self.path}: the model's input has shape {shape}; hsftrain segment runs "
                "models whose input is one image of shape (B, 1, X, Y, Z)"
            )
        probe_shape = [PROBE_SIZE if d is None else d for d in shape]
        probe_shape[:2] = [shape[0] or 1, 1]
        probe = np.random.default_rng(0).standard_normal(probe_shape).astype(np.float32)
        try:
            out = self.run(probe)
        except Exception as err:
            raise ModelError(
                f"{self.path}: the model fails on a test image of shape {tuple(probe_shape)}: "
                f"{' '.join(str(err).split())}"
            ) from err
        if out.ndim != 5 or out.shape[0] != probe.shape[0] or out.shape[2:] != probe.shape[2:]:
            raise ModelError(
                f"{self.path}: the model turns an image of shape {tuple(probe_shape)} into "
                f"{tuple(out.shape)}; hsftrain segment needs class probabilities "
                "(B, C, X, Y, Z) on the input's grid"
            )
        if out.shape[1] < 2:
            raise ModelError(
                f"{self.path}: the model outputs {out.shape[1]} class; a segmentation model "
                "needs at least 2 (background + a structure)"
            )
        if not np.isfinite(out).all():
            raise NonFiniteError(
                f"{self.path}: the model outputs NaN/Inf on a test image, it cannot be used "
                "(e.g. exported from a training that diverged): export an earlier checkpoint"
            )
        return int(out.shape[1])

    def _labels_names(self) -> list[str]:
        """Class names from the metadata, checked against the output's classes.

        Raises:
            ModelError: metadata that names more or fewer classes than the model outputs.
        """
        n = self.output_classes
        fix = (
            "its volumes would be written under the wrong names: fix or drop the metadata "
            "(hsftrain export writes it from the checkpoint)"
        )
        if "num_classes" in self.metadata and int(self.metadata["num_classes"]) != n:
            raise ModelError(
                f"{self.path}: its metadata says num_classes={self.metadata['num_classes']} but "
                f"the model outputs {n} classes; {fix}"
            )
        names = self.metadata.get("labels_names")
        if isinstance(names, Mapping):  # {value: name}
            too_big = sorted(int(k) for k in names if int(k) >= n)
            if too_big:
                raise ModelError(
                    f"{self.path}: its labels_names metadata names values {too_big} but the "
                    f"model outputs {n} classes (0..{n - 1}); {fix}"
                )
            return class_names({int(k): str(v) for k, v in names.items()}, n)
        if isinstance(names, Sequence) and not isinstance(names, str) and names:
            if len(names) != n:
                raise ModelError(
                    f"{self.path}: its labels_names metadata names {len(names)} classes "
                    f"({', '.join(map(str, names))}) but the model outputs {n}; {fix}"
                )
            return [str(name) for name in names]
        if n in (len(HSF_MODEL_CLASSES), len(SUBFIELDS)):
            return list(SUBFIELDS[:n])
        return class_names({}, n)

    @property
    def num_classes(self) -> int:
        return len(self.labels_names)

    @property
    def pads_with_minimum(self) -> bool:
        """How the z-normalised crop is padded to a multiple of 8 for this model.

        hsftrain models were trained with the image minimum as padding (they carry an
        ``hsftrain_version`` metadata entry); other models, like the published HSF ones, get
        zeros, the padding of HSF's own pre-processing (torchio ``EnsureShapeMultiple``).
        """
        return "hsftrain_version" in self.metadata

    @property
    def ca_mode(self) -> str:
        """Granularity the model was trained at ("" when unknown)."""
        return str(self.metadata.get("ca_mode", "") or "")

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C, X, Y, Z)`` of images ``(N, 1, X, Y, Z)``, in batches.

        A model whose output is not a probability distribution over C (logits, as in some
        published HSF models) gets a softmax.

        Raises:
            NonFiniteError: the model's output holds NaN or Inf for these images.
        """
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = np.ascontiguousarray(images[start : start + self.batch_size], dtype=np.float32)
            outputs.append(self.run(batch))
        out = np.concatenate(outputs).astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            raise NonFiniteError(
                f"{self.path.name} produced NaN/Inf probabilities for this image: check the "
                "image (intensities, orientation), or the model"
            )
        if self.outputs_logits is None:
            sums = out.sum(axis=1)
            self.outputs_logits = bool(
                out.min() < -1e-4 or out.max() > 1 + 1e-4 or np.abs(sums - 1).max() > 1e-3
            )
            if self.outputs_logits:
                log.info("%s outputs logits: applying a softmax", self.path.name)
        if self.outputs_logits:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out


class OnnxEngine(Engine):
    """One ONNX model in an ONNX Runtime session.

    Args:
        path: ONNX file.
        providers: execution providers in order of preference (unavailable ones are skipped
            with a log line; onnxruntime itself falls back when one fails to initialise).
        batch_size: images per ``session.run`` call.
        intra_op_num_threads: threads inside an operator (0: onnxruntime's default).
        inter_op_num_threads: threads across operators (0: default).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[Provider] = (),
        batch_size: int = 1,
        intra_op_num_threads: int = 0,
        inter_op_num_threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.batch_size = max(1, int(batch_size))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_num_threads or 0)
        options.inter_op_num_threads = int(inter_op_num_threads or 0)
        options.log_severity_level = 3
        chosen = available_providers(providers or parse_providers(None))
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                sess_options=options,
                providers=[p.name for p in chosen],
                provider_options=[p.options for p in chosen],
            )
        except Exception as err:
            raise ModelError(
                f"{self.path}: cannot be loaded by onnxruntime: {' '.join(str(err).split())}; "
                "give an ONNX model (hsftrain export, or a hub model)"
            ) from err
        used = self.session.get_providers()
        if used and chosen and used[0] != chosen[0].name:
            log.info(
                "%s: %s failed to start, running on %s", self.path.name, chosen[0].name, used[0]
            )
        self.providers = list(used)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = decode_metadata(meta)
        self._check()

    def input_shapes(self) -> list[tuple[str, list[int | None]]]:
        return [
            (i.name, [d if isinstance(d, int) and d > 0 else None for d in i.shape])
            for i in self.session.get_inputs()
        ]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output_name], {self.input_name: batch})[0])

"""ONNX Runtime inference engines and model resolution (local paths or hub downloads).

A model is any ONNX file with one input ``(B, 1, X, Y, Z)`` and one output ``(B, C, X, Y, Z)``
of class probabilities (hsftrain exports name them ``cropped_hippocampus`` and
``segmented_hippocampus``; other names work too). Class names come from the model's
``labels_names`` metadata; without it, a model with the six outputs of the published HSF
models gets :data:`hsftrain.data.labels.HSF_MODEL_CLASSES`, one with eight
:data:`hsftrain.data.labels.SUBFIELDS` (head and tail added), any other ``label_<i>``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.config import ConfigError
from hsftrain.data.labels import HSF_MODEL_CLASSES, SUBFIELDS

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python (leaves plain values alone)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def model_specs(models: Any) -> list[tuple[str, Any]]:
    """Normalise ``segmentation.models`` (or the ``models`` shortcut) to ``[(name, spec)]``.

    Accepted forms: ``{name: spec}`` or a list of specs, where a spec is a local path, a
    hub registry name (``hsftrain/hub/presets/models.yaml``), ``{path: ..., xxh3_64: ...}``
    or ``{url: ..., xxh3_64: ...}``.

    Raises:
        ConfigError: no model, or an entry that is none of the above.
    """
    models = _plain(models)
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
    for entry in _plain(providers) or DEFAULT_PROVIDERS:
        if isinstance(entry, str):
            out.append(Provider(entry, {}))
        elif isinstance(entry, Sequence) and entry and isinstance(entry[0], str):
            out.append(Provider(entry[0], dict(entry[1]) if len(entry) > 1 else {}))
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


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


class OnnxEngine:
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
            raise RuntimeError(f"{self.path}: cannot be loaded by onnxruntime: {err}") from err
        used = self.session.get_providers()
        if used and chosen and used[0] != chosen[0].name:
            log.info(
                "%s: %s failed to start, running on %s", self.path.name, chosen[0].name, used[0]
            )
        self.providers = list(used)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {k: _decode(v) for k, v in meta.items()}
        self.labels_names = self._labels_names()
        self.outputs_logits: bool | None = None  # decided on the first prediction

    def _num_classes(self) -> int:
        if "num_classes" in self.metadata:
            return int(self.metadata["num_classes"])
        shape = self.session.get_outputs()[0].shape
        if len(shape) == 5 and isinstance(shape[1], int):
            return int(shape[1])
        probe = np.zeros((1, 1, 16, 16, 16), dtype=np.float32)
        return int(self.session.run([self.output_name], {self.input_name: probe})[0].shape[1])

    def _labels_names(self) -> list[str]:
        names = self.metadata.get("labels_names")
        if isinstance(names, Mapping):  # {value: name}
            n = self._num_classes()
            table = ["background"] + [f"label_{i}" for i in range(1, n)]
            for k, v in names.items():
                if int(k) < n:
                    table[int(k)] = str(v)
            return table
        if isinstance(names, Sequence) and not isinstance(names, str) and names:
            return [str(n) for n in names]
        n = self._num_classes()
        if n in (len(HSF_MODEL_CLASSES), len(SUBFIELDS)):
            return list(SUBFIELDS[:n])
        return ["background"] + [f"label_{i}" for i in range(1, n)]

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
        """
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = np.ascontiguousarray(images[start : start + self.batch_size], dtype=np.float32)
            outputs.append(self.session.run([self.output_name], {self.input_name: batch})[0])
        out = np.concatenate(outputs).astype(np.float32, copy=False)
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

"""The OpenVINO engine (CPU) and the choice of engine for a model (``hardware.engine``).

OpenVINO runs the ONNX models of ``hsftrain segment`` about twice as fast as ONNX Runtime
on a CPU when the model is compiled for the exact input shape, so each shape is compiled
once (``(B, 1, X, Y, Z)``; the crops of a cohort padded to a multiple of 8 have few shapes)
and kept in a small cache. Precision is f32 only: bf16 changes too many labels.

Whatever goes wrong on OpenVINO's side (not installed, a model it cannot read or compile,
an input shape it fails on) costs one log line naming the model and the reason; that model
then runs on ONNX Runtime. A model that is itself unusable (its contract, its class names,
NaN outputs) is refused by the same checks as on ONNX Runtime
(:class:`hsftrain.inference.engines.Engine`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hsftrain.core.errors import UserError
from hsftrain.core.onnx_metadata import proto_metadata
from hsftrain.inference.engines import Engine, OnnxEngine, Provider

log = logging.getLogger(__name__)

#: Compiled input shapes kept per model (least recently used dropped first).
CACHE_SIZE = 8
#: What the log line "model X: path on ..." says for a model on OpenVINO.
DESCRIPTION = "OpenVINO CPU"
CPU = "CPUExecutionProvider"
#: Views per model and crop from which ``hardware.engine=auto`` runs a model on OpenVINO.
#: OpenVINO compiles each input shape once (about 0.3-0.5 s for an HSF-size network, on one
#: core) and then runs it 1.1-2.7x faster than ONNX Runtime: with test-time augmentation
#: (21 views) it won end to end (5 x 21 views: 13.7 against 19.5 s per crop), with one or
#: two views per crop the compilations cost more than they saved on a folder of MSD crops
#: (docs/decisions.md, CPU inference engine).
OPENVINO_MIN_VIEWS = 8


def _reason(err: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class OpenVinoEngine(Engine):
    """One ONNX model on OpenVINO's CPU plugin, compiled once per input shape (f32).

    Args:
        path: ONNX file.
        batch_size: images per inference.
        threads: OpenVINO's ``INFERENCE_NUM_THREADS`` (0: all cores).
        inter_op_num_threads: passed to ONNX Runtime if the model falls back to it.

    Raises:
        ImportError: OpenVINO is not installed.
        RuntimeError: OpenVINO cannot read the model.
        ModelError, NonFiniteError: a model no engine can use (checks of :class:`Engine`).
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 1,
        threads: int = 0,
        inter_op_num_threads: int = 0,
    ) -> None:
        import onnx
        import openvino as ov

        self.path = Path(path)
        self.batch_size = max(1, int(batch_size))
        self.threads = int(threads or 0)
        self.inter_op_num_threads = int(inter_op_num_threads or 0)
        self.core = ov.Core()
        self.model = self.core.read_model(str(self.path))
        self.metadata = proto_metadata(onnx.load(str(self.path), load_external_data=False))
        self.config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",  # bf16 changes too many labels
            "PERFORMANCE_HINT": "LATENCY",
            # compiles each shape 30% faster, runs as fast, same outputs to 1e-5
            # (docs/decisions.md, CPU inference engine)
            "SNIPPETS_MODE": "DISABLE",
        }
        if self.threads:  # a share of the cores (hardware.jobs): no pinning to the same ones
            self.config.update(INFERENCE_NUM_THREADS=self.threads, ENABLE_CPU_PINNING=False)
        self.providers = [DESCRIPTION]
        self._compiled: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.fallback: OnnxEngine | None = None
        self._check()

    def input_shapes(self) -> list[tuple[str, list[int | None]]]:
        shapes = []
        for port in self.model.inputs:
            dims = port.get_partial_shape()
            names = port.get_names()
            name = sorted(names)[0] if names else "input"
            shapes.append((name, [d.get_length() if d.is_static else None for d in dims]))
        return shapes

    def _request(self, shape: tuple[int, ...]) -> Any:
        """An infer request of the model compiled for ``shape`` (compiled on first use)."""
        request = self._compiled.get(shape)
        if request is None:
            self.model.reshape({self.model.inputs[0]: list(shape)})
            compiled = self.core.compile_model(self.model, "CPU", self.config)
            request = compiled.create_infer_request()
            self._compiled[shape] = request
            while len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(shape)
        return request

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Compile the model for ``shape`` now (a failure falls back, as in :meth:`run`)."""
        if self.fallback is None:
            try:
                self._request(tuple(shape))
            except Exception as err:  # an op or a shape OpenVINO cannot run
                self._fails_on(tuple(shape), err)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.fallback is None:
            try:
                request = self._request(tuple(batch.shape))
                request.infer({0: batch})
                return np.array(request.get_output_tensor(0).data, dtype=np.float32)
            except Exception as err:  # an op or a shape OpenVINO cannot run
                self._fails_on(tuple(batch.shape), err)
        assert self.fallback is not None
        return self.fallback.run(batch)

    def _fails_on(self, shape: tuple[int, ...], err: Exception) -> None:
        self._fall_back(f"fails on an input of shape {shape}: {_reason(err)}")

    def _fall_back(self, reason: str) -> None:
        """Run this model on ONNX Runtime from now on (one warning naming it and why)."""
        log.warning("model %s: OpenVINO %s; running it on ONNX Runtime", self.path.name, reason)
        self._compiled.clear()
        self.fallback = OnnxEngine(
            self.path, [Provider(CPU, {})], self.batch_size, self.threads, self.inter_op_num_threads
        )
        self.providers = list(self.fallback.providers)


def auto_engine(engine: str, views: int) -> str:
    """The engine ``hardware.engine=auto`` means for a run of ``views`` views per model and
    crop: ``auto`` (OpenVINO on a CPU) from :data:`OPENVINO_MIN_VIEWS` views, else
    ``onnxruntime``; other engines as asked. Decided by the settings alone, so the same
    run gives the same outputs whatever the order or the number of workers."""
    if engine == "auto" and views < OPENVINO_MIN_VIEWS:
        return "onnxruntime"
    return engine


def _first_available(providers: Sequence[Provider]) -> str:
    """The execution provider ONNX Runtime would run on (no log line)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return next((p.name for p in providers if p.name in have), CPU)


def open_engine(
    engine: str,
    path: str | Path,
    providers: Sequence[Provider] = (),
    batch_size: int = 1,
    intra_op_num_threads: int = 0,
    inter_op_num_threads: int = 0,
) -> Engine:
    """The engine ``hardware.engine`` asks for, for one model.

    ``auto`` (after :func:`auto_engine` kept it for a run of many views): OpenVINO when it is
    installed and the model runs on a CPU (no GPU provider available first in ``providers``),
    else ONNX Runtime. ``openvino``: OpenVINO on the CPU.
    Any failure of OpenVINO falls back to ONNX Runtime on the CPU with a warning.

    Raises:
        ModelError: a model that cannot be used (names the file and why).
        NonFiniteError: a model that outputs NaN/Inf.
    """
    path = Path(path)
    if engine == "openvino" or (engine == "auto" and _first_available(providers) == CPU):
        try:
            return OpenVinoEngine(path, batch_size, intra_op_num_threads, inter_op_num_threads)
        except UserError:
            raise
        except ImportError as err:
            if engine == "openvino":
                log.warning(
                    "model %s: OpenVINO is not installed (%s; pip install openvino); running "
                    "it on ONNX Runtime",
                    path.name,
                    _reason(err),
                )
            providers = [Provider(CPU, {})]
        except Exception as err:  # OpenVINO cannot read it (an op, a format it lacks)
            log.warning(
                "model %s: OpenVINO cannot read it (%s); running it on ONNX Runtime",
                path.name,
                _reason(err),
            )
            providers = [Provider(CPU, {})]
    return OnnxEngine(path, providers, batch_size, intra_op_num_threads, inter_op_num_threads)

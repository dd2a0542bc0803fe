"""ONNX export with dynamic batch and spatial axes, metadata, and verification."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hsftrain import __version__
from hsftrain.core.atomic import atomic_path
from hsftrain.core.errors import ExportError
from hsftrain.core.onnx_metadata import INPUT_NAME, OUTPUT_NAME, write_metadata

__all__ = [
    "DEFAULT_OPSET",
    "FLOAT_ATOL",
    "ExportError",
    "SoftmaxModel",
    "export_onnx",
    "verify_onnx",
]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
#: Largest ONNX Runtime - PyTorch probability difference accepted with float32 weights. Both
#: compute in float32, in different orders: an f_maps 24 / 4-level network trained 30 minutes
#: differed by up to 1.6e-4 on random inputs and on real MSD crops, with no voxel's label
#: changed (docs/decisions.md, "Export tolerance"); a wrongly exported op differs by far more.
FLOAT_ATOL = 1e-3
#: Largest ONNX Runtime - PyTorch probability difference accepted with float16 weights
#: (their rounding, relative 2^-11, moves the probabilities of random-noise inputs by up to
#: ~1e-2 in a 4-level network; on real crops labels agree on >99.9% of voxels).
HALF_ATOL = 2e-2


class SoftmaxModel(nn.Module):
    """Wraps a logits network so that it outputs softmax probabilities ``(B, C, X, Y, Z)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


@dataclass(frozen=True)
class OnnxOptions:
    """How :func:`export_onnx` traces, stores and verifies a network.

    Attributes:
        example_shape: the input traced (batch and spatial axes stay dynamic).
        opset: the ONNX opset.
        verify_shapes: inputs on which ONNX Runtime is compared with PyTorch (None: none).
        atol: the largest difference accepted.
        half_weights: weights stored in float16 (half the file; ONNX Runtime casts them
            back to float32 once, when the session is created, and computes in float32);
            checked against PyTorch with ``max(atol, HALF_ATOL)``.
    """

    example_shape: Sequence[int] = (2, 1, 24, 32, 24)
    opset: int = DEFAULT_OPSET
    verify_shapes: Sequence[Sequence[int]] | None = ((1, 1, 24, 32, 24), (2, 1, 19, 27, 33))
    atol: float = FLOAT_ATOL
    half_weights: bool = False


def export_onnx(
    net: nn.Module,
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
    options: OnnxOptions | None = None,
) -> Path:
    """Export a logits network as an ONNX model of softmax probabilities.

    Input ``cropped_hippocampus`` ``(B, 1, X, Y, Z)``, output ``segmented_hippocampus``
    ``(B, C, X, Y, Z)``, batch and spatial axes dynamic. ``metadata`` values are stored as
    JSON strings in the model's metadata_props, with ``hsftrain_version`` added. The file is
    written atomically, then verified against PyTorch on ``options.verify_shapes``
    (:class:`OnnxOptions`).

    Raises:
        ExportError: ONNX Runtime differs from PyTorch by more than ``atol``.
    """
    import onnx

    o = options or OnnxOptions()
    atol = o.atol
    path = Path(path)
    model = SoftmaxModel(net).eval().cpu()
    example = torch.randn(*o.example_shape)
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=o.opset,
            dynamo=False,
        )
        proto = onnx.load(str(tmp))
        meta = {"hsftrain_version": __version__, **(metadata or {})}
        write_metadata(proto, meta)
        if o.half_weights:
            store_weights_half(proto)
            atol = max(atol, HALF_ATOL)
        onnx.save(proto, str(tmp))
        if o.verify_shapes:
            diff = verify_onnx(net, tmp, o.verify_shapes, name=path)
            if not diff <= atol:  # NaN compares false: a non-finite difference fails too
                raise ExportError(
                    f"ONNX Runtime differs from PyTorch by {diff:.2e} (> {atol:.0e}) for {path}; "
                    "nothing was written"
                )
    return path


def store_weights_half(proto: Any, min_size: int = 16) -> int:
    """Store the float32 initializers of ``proto`` (with at least ``min_size`` values) in
    float16, each read back through a ``Cast`` to float32 placed first in the graph (ONNX
    Runtime folds these constants when it loads the model). Returns how many were halved.

    Raises:
        ExportError: a weight outside float16's range (it would become Inf).
    """
    import onnx
    from onnx import numpy_helper

    casts = []
    for init in proto.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < min_size:
            continue
        if np.abs(values).max() > np.finfo(np.float16).max:
            raise ExportError(
                f"weight {init.name} exceeds float16's range: export with weights=float32"
            )
        name = init.name
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}__fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}__fp16"], [name], to=1))
    nodes = [*casts, *proto.graph.node]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return len(casts)


def verify_onnx(
    net: nn.Module,
    path: str | Path,
    shapes: Sequence[Sequence[int]],
    seed: int = 0,
    name: str | Path | None = None,
) -> float:
    """Largest absolute difference between ONNX Runtime and PyTorch probabilities.

    Runs both on random inputs of each shape in ``shapes`` and logs the difference.
    ``name``: the model named in errors (default: ``path``).

    Raises:
        ExportError: either output holds NaN or Inf (a model that cannot be used; the
            difference of two NaN outputs would otherwise be NaN, which no bound rejects).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = SoftmaxModel(net).eval().cpu()
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        for engine, out in (("PyTorch", expected), ("ONNX Runtime", got)):
            if not np.isfinite(out).all():
                raise ExportError(
                    f"{name or path}: the model's {engine} output holds NaN/Inf values for an input of "
                    f"shape {tuple(shape)}: the model is broken (e.g. a training that "
                    "diverged); export an earlier checkpoint; nothing was written"
                )
        diff = float(np.abs(got - expected).max())
        log.info("ONNX check %s: max |onnxruntime - torch| = %.2e", tuple(shape), diff)
        worst = max(worst, diff)
    return worst

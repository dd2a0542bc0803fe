"""What an hsftrain ONNX model file holds besides its graph: tensor names and metadata.

Written by :mod:`hsftrain.export` and :mod:`hsftrain.compression.quantize`, read by
:mod:`hsftrain.inference`. Metadata values are stored as JSON text (strings as they are)
in the model's ``metadata_props`` and decoded back here, so every reader sees the same
values. Standard library only (onnxruntime is imported when a file is read).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

#: Name of the input ``(B, 1, X, Y, Z)`` of an exported model.
INPUT_NAME = "cropped_hippocampus"
#: Name of the output ``(B, C, X, Y, Z)`` (class probabilities) of an exported model.
OUTPUT_NAME = "segmented_hippocampus"

# What a model was trained on, compared with each crop by ``hsftrain segment``
# (:mod:`hsftrain.inference.contract`); written by :mod:`hsftrain.export.contract`.
#: Training contrast(s), measured on the training crops: ``["T1"]``, ``["T2"]`` or both.
CONTRASTS_KEY = "contrasts"
#: ``{"contrast_index": [1st percentile, median, 99th percentile], "images": n}`` of the
#: training crops (:func:`hsftrain.data.contrast.contrast_index`).
FINGERPRINT_KEY = "intensity_fingerprint"
#: ``{class name: [1st, 99th percentile] mm3}`` of the training labels, either side, and
#: :data:`WHOLE` for all foreground classes together.
VOLUME_RANGE_KEY = "volume_range_mm3"
#: The name of the whole hippocampus (every foreground class) in :data:`VOLUME_RANGE_KEY`.
WHOLE = "hippocampus"
#: ``[x, y, z]`` mm: median extent of the training crops (canonical RAS axes), written by
#: :mod:`hsftrain.export.field_of_view`; whole-head crops are sized to it
#: (:mod:`hsftrain.inference.boxes`).
FIELD_OF_VIEW_KEY = "field_of_view_mm"


def encode_value(value: Any) -> str:
    """A metadata value as stored: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Stored metadata ``{key: text}`` -> values (JSON decoded; other text kept as is)."""
    out: dict[str, Any] = {}
    for key, text in props.items():
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def proto_metadata(proto: onnx.ModelProto) -> dict[str, Any]:
    """Decoded metadata of an ONNX ``ModelProto`` (the reverse of :func:`write_metadata`)."""
    return decode_metadata({p.key: p.value for p in proto.metadata_props})


def write_metadata(proto: onnx.ModelProto, metadata: Mapping[str, Any]) -> None:
    """Replace the metadata of an ONNX ``ModelProto`` by ``metadata`` (encoded)."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = str(key)
        entry.value = encode_value(value)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Decoded metadata of an ONNX file.

    Raises:
        onnxruntime's errors: the file cannot be loaded.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return decode_metadata(session.get_modelmeta().custom_metadata_map)

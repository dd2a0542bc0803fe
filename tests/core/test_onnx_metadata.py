"""hsftrain.core.onnx_metadata: metadata written and read back the same by every stage."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from hsftrain.core.onnx_metadata import (
    INPUT_NAME,
    OUTPUT_NAME,
    decode_metadata,
    encode_value,
    read_metadata,
    write_metadata,
)

META = {"labels_names": ["background", "DG"], "num_classes": 2, "ca_mode": "1/23", "x": None}


def test_values_round_trip() -> None:
    stored = {k: encode_value(v) for k, v in META.items()}
    assert stored["ca_mode"] == "1/23" and stored["num_classes"] == "2" and stored["x"] == "null"
    assert decode_metadata(stored) == META
    assert decode_metadata({"free": "not json {"}) == {"free": "not json {"}


def test_written_metadata_is_read_back(tmp_path: Path) -> None:
    """A one-node model (identity) with the exported models' tensor names."""
    shape = ["b", 1, "x", "y", "z"]
    graph = helper.make_graph(
        [helper.make_node("Identity", [INPUT_NAME], [OUTPUT_NAME])],
        "g",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, shape)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    write_metadata(proto, {"stale": 1})
    write_metadata(proto, META)  # replaces, never appends
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    assert read_metadata(path) == META

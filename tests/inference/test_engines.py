"""ONNX Runtime engines: model specs, providers, metadata, batching, logits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from hsftrain.config.compose import ConfigError
from hsftrain.data.labels import SUBFIELDS
from hsftrain.inference.engines import (
    OnnxEngine,
    Provider,
    available_providers,
    model_specs,
    parse_providers,
    resolve_model,
)

from .conftest import MSD_NAMES


def logits_model(path: Path, channels: int) -> Path:
    """An ONNX model without metadata whose output is logits: concat(x, 2x, ...) on C."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["b", 1, "x", "y", "z"]
    nodes, names = [], []
    for c in range(channels):
        scale = helper.make_tensor(f"s{c}", TensorProto.FLOAT, [], [float(c) - 1.0])
        nodes.append(helper.make_node("Constant", [], [f"k{c}"], value=scale))
        nodes.append(helper.make_node("Mul", ["input", f"k{c}"], [f"y{c}"]))
        names.append(f"y{c}")
    nodes.append(helper.make_node("Concat", names, ["output"], axis=1))
    graph = helper.make_graph(
        nodes,
        "logits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, ["b", channels, "x", "y", "z"]
            )
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_model_specs_forms() -> None:
    assert model_specs(["/a/m1.onnx", "/b/m2.onnx"]) == [
        ("m1.onnx", "/a/m1.onnx"),
        ("m2.onnx", "/b/m2.onnx"),
    ]
    assert model_specs({"x": {"path": "/p.onnx"}}) == [("x", {"path": "/p.onnx"})]
    assert model_specs({"x": {"url": "https://u/m.onnx", "xxh3_64": "0" * 16}})[0][0] == "x"
    assert model_specs("arunet_3.0.0_single") == [("arunet_3.0.0_single", "arunet_3.0.0_single")]
    with pytest.raises(ConfigError, match="no model configured"):
        model_specs(None)
    with pytest.raises(ConfigError, match="segmentation.models.bad"):
        model_specs({"bad": {"sha": "x"}})


def test_resolve_model_local_path_and_errors(tiny_model: Path, tmp_path: Path) -> None:
    assert resolve_model("m", str(tiny_model)) == tiny_model.resolve()
    assert resolve_model("m", {"path": str(tiny_model)}) == tiny_model.resolve()
    with pytest.raises(ConfigError, match="segmentation.models.missing"):
        resolve_model("missing", {"path": str(tmp_path / "nope.onnx")})


def test_parse_providers() -> None:
    parsed = parse_providers(
        [
            "CUDAExecutionProvider",
            ["CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}],
        ]
    )
    assert parsed == [
        Provider("CUDAExecutionProvider", {}),
        Provider("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}),
    ]
    assert parse_providers([{"CPUExecutionProvider": None}]) == [
        Provider("CPUExecutionProvider", {})
    ]
    assert [p.name for p in parse_providers(None)] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(ConfigError, match="execution_providers"):
        parse_providers([42])


def test_unavailable_providers_fall_back_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="hsftrain"):
        kept = available_providers([Provider("NoSuchExecutionProvider", {})])
    assert [p.name for p in kept] == ["CPUExecutionProvider"]
    assert "NoSuchExecutionProvider is not available" in caplog.text


def test_engine_metadata_and_batched_prediction(tiny_model: Path) -> None:
    engine = OnnxEngine(
        tiny_model, parse_providers(["CUDAExecutionProvider", "CPUExecutionProvider"])
    )
    assert engine.labels_names == MSD_NAMES and engine.num_classes == 3
    assert engine.providers[-1] == "CPUExecutionProvider"
    x = np.random.default_rng(0).normal(size=(3, 1, 16, 24, 16)).astype(np.float32)
    probs = engine.predict(x)
    assert probs.shape == (3, 3, 16, 24, 16)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert engine.outputs_logits is False
    batched = OnnxEngine(tiny_model, batch_size=2, intra_op_num_threads=1).predict(x)
    np.testing.assert_allclose(batched, probs, atol=1e-5)


def test_engine_applies_softmax_to_logits_and_names_classes(tmp_path: Path) -> None:
    engine = OnnxEngine(logits_model(tmp_path / "logits.onnx", 3))
    assert engine.labels_names == ["background", "label_1", "label_2"]
    assert engine.input_name == "input"
    x = np.linspace(-2, 2, 8**3, dtype=np.float32).reshape(1, 1, 8, 8, 8)
    probs = engine.predict(x)
    assert engine.outputs_logits is True
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1)[x[:, 0] > 0] == 2).all()
    # the published HSF models: six outputs, no metadata
    hsf = OnnxEngine(logits_model(tmp_path / "hsf.onnx", 6))
    assert hsf.labels_names == ["background", "DG", "CA1", "CA2", "CA3", "SUB"]
    with_head_tail = OnnxEngine(logits_model(tmp_path / "hsf8.onnx", len(SUBFIELDS)))
    assert with_head_tail.labels_names == list(SUBFIELDS)
    assert OnnxEngine(logits_model(tmp_path / "l7.onnx", 7)).labels_names[-1] == "label_6"


def test_unloadable_model_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(RuntimeError, match="broken.onnx"):
        OnnxEngine(bad)


def test_engine_contract_metadata_must_match_the_output(tmp_path: Path) -> None:
    import onnx

    from hsftrain.inference.engines import ModelError

    def with_metadata(name: str, **meta: str) -> Path:
        path = logits_model(tmp_path / f"{name}.onnx", 3)
        proto = onnx.load(str(path))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(path))
        return path

    ok = OnnxEngine(with_metadata("ok", labels_names='{"1": "DG", "2": "CA1"}'))
    assert ok.labels_names == ["background", "DG", "CA1"] and ok.output_classes == 3
    with pytest.raises(ModelError, match="num_classes=8 but the model outputs 3"):
        OnnxEngine(with_metadata("count", num_classes="8"))
    with pytest.raises(ModelError, match=r"names values \[5\]"):
        OnnxEngine(with_metadata("mapping", labels_names='{"1": "DG", "5": "TAIL"}'))

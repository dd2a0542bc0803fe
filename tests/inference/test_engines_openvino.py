"""The OpenVINO engine: same results as ONNX Runtime, the ``hardware.engine`` setting, and
the fallback to ONNX Runtime (one warning naming the model) whenever OpenVINO fails."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from hsftrain.config.compose import ConfigError, compose
from hsftrain.inference.api import segment
from hsftrain.inference.engines import OnnxEngine, Provider
from hsftrain.inference.openvino_engine import OPENVINO_MIN_VIEWS, OpenVinoEngine, open_engine
from hsftrain.inference.preprocess import pad_to_multiple
from hsftrain.inference.segmenter import load_engines
from hsftrain.inference.settings import settings_from_config

from .conftest import write_crop

openvino = pytest.importorskip("openvino")
REAL_CORE = openvino.Core
CPU = [Provider("CPUExecutionProvider", {})]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.mark.parametrize(
    "shape", [(1, 16, 16, 16), (2, 24, 32, 24), (1, 21, 27, 19), (3, 17, 30, 25)]
)
def test_openvino_matches_onnxruntime(subfield_model: Path, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    images = rng.standard_normal((shape[0], 1, *shape[1:])).astype(np.float32)
    padded, _ = pad_to_multiple(images, 8, float(images.min()))  # odd crops as segment pads
    ov = OpenVinoEngine(subfield_model, batch_size=2)
    ort = OnnxEngine(subfield_model, CPU, batch_size=2)
    assert ov.providers == ["OpenVINO CPU"] and ov.fallback is None
    assert ov.labels_names == ort.labels_names and ov.metadata == ort.metadata
    probs, expected = ov.predict(padded), ort.predict(padded)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert agreement(probs.argmax(1), expected.argmax(1)) >= 0.999


def _run(tmp_path: Path, root: Path, model: Path, engine: str) -> tuple[dict, dict]:
    out = tmp_path / engine
    args = [
        f"files.path={root}",
        "files.pattern=**/*_T1w.nii.gz",
        f"files.output_dir={out}",
        f"model_paths=[{model}]",
        "hardware=cpu",
        f"hardware.engine={engine}",
        "segmentation.fusion=mean",
        "qc=false",
        "report=false",
    ]
    paths = segment(compose("segment", args))
    labels = {p.name: np.asarray(nib.load(p).dataobj) for p in paths}
    with open(out / "volumes.csv", newline="") as f:
        volumes = {row["subject"]: row for row in csv.DictReader(f)}
    return labels, volumes


def test_segment_on_openvino_gives_the_onnxruntime_segmentation(
    tmp_path: Path, subfield_model: Path
) -> None:
    root = tmp_path / "d"
    write_crop(root / "sub-01" / "sub-01_T1w.nii.gz", shape=(21, 27, 19))
    write_crop(root / "sub-02" / "sub-02_T1w.nii.gz", shape=(24, 32, 24), seed=1)
    ov_labels, ov_volumes = _run(tmp_path, root, subfield_model, "openvino")
    ort_labels, ort_volumes = _run(tmp_path, root, subfield_model, "onnxruntime")
    assert ov_labels.keys() == ort_labels.keys() and len(ov_labels) >= 2
    for name, label_map in ov_labels.items():
        assert agreement(label_map, ort_labels[name]) >= 0.999, name
    for subject, row in ov_volumes.items():
        for key, value in row.items():
            try:
                a, b = float(value), float(ort_volumes[subject][key])
            except ValueError:
                continue
            assert abs(a - b) <= 1e-3 * max(abs(b), 1.0), (subject, key, a, b)


def test_auto_is_openvino_on_the_cpu_with_test_time_augmentation(
    tmp_path: Path, tiny_model: Path
) -> None:
    args = [f"files.path={tmp_path}", "files.pattern=*.nii.gz", f"model_paths=[{tiny_model}]"]
    tta = ["segmentation.tta=true", "segmentation.test_time_num_aug=20"]
    cfg = compose("segment", [*args, *tta, "hardware=cpu"])
    settings = settings_from_config(cfg)
    assert settings.engine == "auto"
    (engine,) = load_engines(settings, [tiny_model], threads=1)
    assert isinstance(engine, OpenVinoEngine)
    assert engine.config["INFERENCE_NUM_THREADS"] == 1  # the intra-op threads (a worker's share)
    assert engine.config["INFERENCE_PRECISION_HINT"] == "f32"


@pytest.mark.parametrize("tta", [["segmentation.tta=false"], ["segmentation.tta=flip"]])
def test_auto_is_onnxruntime_for_a_view_or_two(
    tmp_path: Path, tiny_model: Path, tta: list[str]
) -> None:
    """One or two views per crop: OpenVINO's compilation of each crop shape would cost more
    than it saves, so auto keeps ONNX Runtime (the choice depends on the settings only)."""
    args = [f"files.path={tmp_path}", "files.pattern=*.nii.gz", f"model_paths=[{tiny_model}]"]
    settings = settings_from_config(compose("segment", [*args, *tta]))
    assert settings.engine == "auto" and 1 + settings.num_aug < OPENVINO_MIN_VIEWS
    (engine,) = load_engines(settings, [tiny_model], threads=1)
    assert isinstance(engine, OnnxEngine) and not isinstance(engine, OpenVinoEngine)


def test_bad_engine_names_the_key_and_the_choices(tmp_path: Path) -> None:
    cfg = compose(
        "segment",
        [f"files.path={tmp_path}", "files.pattern=*.nii.gz", "hardware.engine=tensorrt"],
    )
    with pytest.raises(ConfigError, match=r"hardware\.engine='tensorrt': use one of auto, "):
        settings_from_config(cfg)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("engine", ["openvino", "auto"])
def test_openvino_not_installed_falls_back_to_onnxruntime(
    tiny_model: Path,
    engine: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with caplog.at_level(logging.INFO, logger="hsftrain"):
        model = open_engine(engine, tiny_model, CPU)
    assert isinstance(model, OnnxEngine) and model.providers == ["CPUExecutionProvider"]
    warnings = _warnings(caplog)
    if engine == "openvino":  # asked for: say why it is not used
        assert len(warnings) == 1, warnings
        assert tiny_model.name in warnings[0] and "OpenVINO is not installed" in warnings[0]
        assert "running it on ONNX Runtime" in warnings[0]
    else:
        assert warnings == []


class _Core:
    """An OpenVINO Core that fails to read models, or to compile them after ``compiles``."""

    def __init__(self, read: bool = True, compiles: int = 0) -> None:
        self.core = REAL_CORE()
        self.read = read
        self.compiles = compiles

    def read_model(self, path: str) -> Any:
        if not self.read:
            raise RuntimeError("OpenVINO does not support this operation: Foo")
        return self.core.read_model(path)

    def compile_model(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiles <= 0:
            raise RuntimeError("Unsupported operation of type: Foo")
        self.compiles -= 1
        return self.core.compile_model(*args, **kwargs)


@pytest.mark.parametrize(
    ("core", "reason"),
    [
        (dict(read=False), "cannot read it"),
        (dict(compiles=0), "fails on an input of shape (1, 1, 16, 16, 16)"),
    ],
)
def test_a_model_openvino_cannot_read_or_compile_runs_on_onnxruntime(
    tiny_model: Path,
    core: dict,
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(openvino, "Core", lambda: _Core(**core))
    with caplog.at_level(logging.INFO, logger="hsftrain"):
        model = open_engine("openvino", tiny_model, CPU)
    assert model.providers == ["CPUExecutionProvider"]
    (warning,) = _warnings(caplog)
    assert f"model {tiny_model.name}: OpenVINO {reason}" in warning
    assert "Foo" in warning and warning.endswith("running it on ONNX Runtime")
    images = np.random.default_rng(0).standard_normal((1, 1, 16, 24, 16)).astype(np.float32)
    expected = OnnxEngine(tiny_model, CPU).predict(images)
    np.testing.assert_allclose(model.predict(images), expected, atol=1e-6)


def test_a_shape_openvino_fails_on_runs_on_onnxruntime(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(openvino, "Core", lambda: _Core(compiles=1))  # the test image only
    model = open_engine("openvino", tiny_model, CPU)
    assert isinstance(model, OpenVinoEngine) and model.providers == ["OpenVINO CPU"]
    images = np.random.default_rng(0).standard_normal((1, 1, 24, 32, 24)).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="hsftrain"):
        probs = model.predict(images)
        model.predict(images)  # already on ONNX Runtime: no second line
    (warning,) = _warnings(caplog)
    assert "fails on an input of shape (1, 1, 24, 32, 24)" in warning and "Foo" in warning
    assert model.providers == ["CPUExecutionProvider"]
    np.testing.assert_allclose(probs, OnnxEngine(tiny_model, CPU).predict(images), atol=1e-6)


def test_a_bad_model_is_refused_on_openvino_too(tmp_path: Path) -> None:
    from hsftrain.inference.engines import ModelError

    from .test_engines import logits_model

    path = logits_model(tmp_path / "m.onnx", 1)  # one class: no segmentation
    with pytest.raises(ModelError, match="at least 2"):
        open_engine("openvino", path, CPU)


class _CountingCore(_Core):
    """A real Core that records each compiled input shape and the thread that compiled it."""

    calls: list[tuple[tuple[int, ...], str]] = []

    def __init__(self) -> None:
        super().__init__(compiles=10**6)

    def compile_model(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        import threading

        shape = tuple(d.get_length() for d in model.inputs[0].get_partial_shape())
        self.calls.append((shape, threading.current_thread().name))
        return super().compile_model(model, *args, **kwargs)


def test_an_ensemble_compiles_a_new_crop_shape_once_per_model_side_by_side(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsftrain.inference.segmenter import Segmenter, SegmenterOptions

    monkeypatch.setattr(openvino, "Core", _CountingCore)
    _CountingCore.calls = []
    engines = [OpenVinoEngine(tiny_model) for _ in range(3)]
    probe = list(_CountingCore.calls)  # each model's contract check on its test image
    options = SegmenterOptions({"flip": {"p": 1.0, "axes": ["LR"]}}, num_aug=2)
    image = np.random.default_rng(0).standard_normal((20, 27, 18)).astype(np.float32)
    for _ in range(2):  # a second crop of the same shape compiles nothing
        Segmenter(engines, options).segment_crop(image, (1.0, 1.0, 1.0), np.random.default_rng(1))
    crop = _CountingCore.calls[len(probe) :]
    assert [shape for shape, _ in crop] == [(1, 1, 24, 32, 24)] * 3  # once per model
    assert all(thread != "MainThread" for _, thread in crop)  # in a pool, side by side
    assert all(e.fallback is None for e in engines)


def test_a_shape_openvino_fails_to_compile_in_advance_runs_on_onnxruntime(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(openvino, "Core", lambda: _Core(compiles=1))  # the test image only
    model = open_engine("openvino", tiny_model, CPU)
    with caplog.at_level(logging.INFO, logger="hsftrain"):
        model.prepare((1, 1, 24, 32, 24))
    (warning,) = _warnings(caplog)
    assert "fails on an input of shape (1, 1, 24, 32, 24)" in warning
    images = np.random.default_rng(0).standard_normal((1, 1, 24, 32, 24)).astype(np.float32)
    np.testing.assert_allclose(
        model.predict(images), OnnxEngine(tiny_model, CPU).predict(images), atol=1e-6
    )

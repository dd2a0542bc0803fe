"""``hardware=gpu``: TensorRT, then CUDA, then the CPU through ONNX Runtime. Without a GPU
provider it still segments (on the CPU, with a log line per missing provider)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hsftrain.config.compose import compose
from hsftrain.inference.api import segment
from hsftrain.inference.segmenter import load_engines
from hsftrain.inference.settings import settings_from_config

from .test_shards import cohort, outputs


def _cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _args(root: Path, model: Path) -> list[str]:
    return [
        f"files.path={root}",
        "files.pattern=**/*_T1w.nii.gz",
        f"model_paths=[{model}]",
        "hardware=gpu",
        "qc=false",
    ]


def test_gpu_preset_orders_tensorrt_cuda_cpu(tmp_path: Path, tiny_model: Path) -> None:
    settings = settings_from_config(compose("segment", _args(tmp_path, tiny_model)))
    assert [p.name for p in settings.providers] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert settings.engine == "onnxruntime"


def test_gpu_preset_without_a_gpu_provider_runs_on_the_cpu(
    tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if _cuda():
        pytest.skip("this onnxruntime build has the CUDA provider")
    settings = settings_from_config(compose("segment", _args(tmp_path, tiny_model)))
    with caplog.at_level(logging.INFO, logger="hsftrain"):
        (engine,) = load_engines(settings, [tiny_model])
    assert engine.providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is not available" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDAExecutionProvider (onnxruntime-gpu)")
def test_segment_with_the_gpu_preset(tmp_path: Path, tiny_model: Path) -> None:
    root = cohort(tmp_path / "d", n=2)
    settings = settings_from_config(compose("segment", _args(root, tiny_model)))
    (engine,) = load_engines(settings, [tiny_model])
    assert engine.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    paths = segment(compose("segment", _args(root, tiny_model)))
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    assert outputs(root)

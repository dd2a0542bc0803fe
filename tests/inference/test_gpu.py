"""GPU inference through ONNX Runtime's CUDA execution provider (skipped without one), and
the CPU fallback that is logged when the provider is missing."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from hsftrain.config.compose import compose
from hsftrain.inference.api import segment
from hsftrain.inference.engines import OnnxEngine, parse_providers

from .test_shards import cohort, outputs


def _cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


needs_cuda = pytest.mark.skipif(not _cuda(), reason="no CUDAExecutionProvider (onnxruntime-gpu)")


def test_missing_cuda_provider_falls_back_to_the_cpu_with_a_log_line(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if _cuda():
        pytest.skip("this onnxruntime build has the CUDA provider")
    with caplog.at_level(logging.INFO, logger="hsftrain"):
        engine = OnnxEngine(tiny_model, parse_providers(None))  # CUDA first, then CPU
    assert engine.providers == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider is not available" in caplog.text


@pytest.mark.gpu
@needs_cuda
def test_cuda_engine_matches_the_cpu(tiny_model: Path) -> None:
    gpu = OnnxEngine(tiny_model, parse_providers(["CUDAExecutionProvider"]))
    cpu = OnnxEngine(tiny_model, parse_providers(["CPUExecutionProvider"]))
    assert gpu.providers[0] == "CUDAExecutionProvider"
    images = np.random.default_rng(0).standard_normal((2, 1, 24, 32, 24)).astype(np.float32)
    np.testing.assert_allclose(gpu.predict(images), cpu.predict(images), atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_segment_with_two_workers_on_the_gpu(tmp_path: Path, tiny_model: Path) -> None:
    root = cohort(tmp_path / "d", n=3)
    args = [
        f"files.path={root}",
        "files.pattern=**/*_T1w.nii.gz",
        f"model_paths=[{tiny_model}]",
        "hardware=onnxruntime",
        "hardware.jobs=2",
        "hardware.devices=[0]",
        "qc=false",
    ]
    paths = segment(compose("segment", args))
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    assert outputs(root)

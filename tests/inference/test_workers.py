"""``hardware.jobs=K``: worker processes give the outputs of one process, and keep its
skip, resume and failure guarantees."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from hsftrain.config.compose import ConfigError, compose
from hsftrain.inference.api import SegmentError, segment, settings_from_config
from hsftrain.inference.workers import threads_per_worker, usable_cores
from hsftrain.inference.writer import read_volumes

from .test_shards import cohort, outputs, overrides


@pytest.mark.slow
def test_two_workers_write_what_one_process_writes(tmp_path: Path, tiny_model: Path) -> None:
    one = cohort(tmp_path / "one", n=4)
    two = tmp_path / "two"
    shutil.copytree(one, two)
    segment(compose("segment", overrides(one, tiny_model)))
    paths = segment(compose("segment", overrides(two, tiny_model, "hardware.jobs=2")))
    assert [p.parent.name for p in paths] == [f"sub-0{i}" for i in range(4)]
    assert outputs(two) == outputs(one)  # segmentations, uncertainty, tables: same bytes
    assert (two / "volumes.csv").read_bytes() == (one / "volumes.csv").read_bytes()
    assert not list(two.rglob("*hsftrain-tmp*"))

    # resume: only the unfinished subject is segmented again
    done = two / "sub-01" / "sub-01_T1w_hippocampus_seg.nii.gz"
    stamp = done.stat().st_mtime_ns
    (two / "sub-02" / "sub-02_T1w_hippocampus_seg.nii.gz").unlink()
    segment(compose("segment", overrides(two, tiny_model, "hardware.jobs=2")))
    assert done.stat().st_mtime_ns == stamp
    assert outputs(two) == outputs(one)


@pytest.mark.slow
def test_a_bad_subject_fails_alone_in_a_worker(tmp_path: Path, tiny_model: Path) -> None:
    root = cohort(tmp_path / "d", n=2)
    corrupt = root / "sub-09" / "sub-09_T1w.nii.gz"
    corrupt.parent.mkdir()
    corrupt.write_bytes(gzip.compress(b"\x00" * 64))
    with pytest.raises(SegmentError, match=r"1 of 3 MRI\(s\) failed.*sub-09_T1w"):
        segment(compose("segment", overrides(root, tiny_model, "hardware.jobs=2")))
    rows = read_volumes(root / "volumes.csv")
    assert [r["subject"] for r in rows] == ["sub-00/sub-00_T1w"] * 2 + ["sub-01/sub-01_T1w"] * 2 + [
        "sub-09/sub-09_T1w"
    ]
    assert rows[-1]["flag"].startswith("failed: ")


def test_threads_are_divided_among_the_workers(tmp_path: Path, tiny_model: Path) -> None:
    settings = settings_from_config(
        compose("segment", overrides(tmp_path, tiny_model, "hardware.jobs=2"))
    )
    assert settings.jobs == 2 and settings.devices is None
    assert threads_per_worker(settings, 2) == max(1, usable_cores() // 2)
    assert threads_per_worker(settings, 1000) == 1
    settings.intra_op_num_threads = 8
    assert threads_per_worker(settings, 2) == 4 and threads_per_worker(settings, 3) == 2
    gpus = settings_from_config(
        compose("segment", overrides(tmp_path, tiny_model, "hardware.devices=[0,1]"))
    )
    assert gpus.devices == [0, 1]
    for bad in ("hardware.jobs=0", "hardware.jobs=two", "hardware.devices=[gpu0]"):
        key = bad.split("=")[0].replace(".", r"\.")
        with pytest.raises(ConfigError, match=key):
            settings_from_config(compose("segment", overrides(tmp_path, tiny_model, bad)))


def test_cuda_provider_options_follow_the_worker_device() -> None:
    from hsftrain.inference.engines import Provider
    from hsftrain.inference.segmenter import with_device

    providers = [
        Provider("CUDAExecutionProvider", {"arena": 1}),
        Provider("CPUExecutionProvider", {}),
    ]
    assert with_device(providers, None) == providers
    moved = with_device(providers, 3)
    assert moved[0].options == {"arena": 1, "device_id": 3} and moved[1] == providers[1]


@pytest.mark.slow
def test_multispectral_subjects_in_workers(tmp_path: Path, tiny_model: Path) -> None:
    """T1 + T2 in worker processes (with their own T2 models): the outputs of one process."""
    import numpy as np

    from .test_multispectral import overrides as t1_t2
    from .test_multispectral import write_pair

    one = tmp_path / "one"
    for name in ("a", "b", "c"):
        write_pair(one / name, name, np.eye(4))
    two = tmp_path / "two"
    shutil.copytree(one, two)
    extra = ("multispectral.t2_space=true", f"multispectral.t2_model_paths=[{tiny_model}]")
    segment(compose("segment", t1_t2(one, tiny_model, *extra)))
    segment(compose("segment", t1_t2(two, tiny_model, *extra, "hardware.jobs=2")))
    produced = outputs(two)
    assert any("_T2w_hippocampus_seg" in name for name in produced)
    assert produced == outputs(one)

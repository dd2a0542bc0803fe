"""The prepared-data cache at cohort scale: what a run reuses is checked, a broken entry is
prepared again (or refused with one line naming ``datasets.cache_dir``), and mixed voxel
sizes in a training set are reported and recorded in the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning  # noqa: F401  (imported here, its log handler keeps the real stdout, not a CliRunner's)
import numpy as np
import pytest
from omegaconf import OmegaConf

from hsftrain.data.cache import PreparedSubject
from hsftrain.data.synth import write_phantoms
from hsftrain.export.spacing import spacing_metadata

from .conftest import assert_user_error, cli, train_args


@pytest.fixture
def data(phantoms: Path, tmp_path: Path) -> Path:
    """A copy of the phantoms (the tests delete some of them)."""
    return Path(shutil.copytree(phantoms, tmp_path / "data"))


def _prepare(data: Path, cache: Path) -> list[Path]:
    """``hsftrain data prepare`` into ``cache``; its entry folders."""
    out = cli(
        "data",
        "prepare",
        "datasets=synth",
        f"datasets.main_path={data}",
        f"datasets.cache_dir={cache}",
    )
    assert out.code == 0, out.output[-3000:]
    return sorted(p.parent for p in cache.glob("*/meta.json"))


def _train(data: Path, tmp_path: Path, cache: Path, *extra: str):
    return cli(
        "train",
        *train_args(data, tmp_path / "runs", "run_name=r", f"datasets.cache_dir={cache}", *extra),
    )


def _cache_warnings(out) -> list[str]:
    return [w for w in out.warnings if "datasets.cache_dir" in w]


def test_a_label_file_overwritten_with_out_of_range_values_is_not_trained_on(
    data: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    entry = _prepare(data, cache)[0]
    label = np.load(entry / "label.npy")
    label[label > 0] = 200
    np.save(entry / "label.npy", label)
    out = _train(data, tmp_path, cache)
    assert out.code == 0, out.output[-3000:]
    (warning,) = _cache_warnings(out)
    assert "prepared again 1 broken entry" in warning
    assert "label value 200, outside the dataset's 8 classes (0-7)" in warning
    assert int(np.load(entry / "label.npy").max()) < 8


def test_a_truncated_cache_image_is_prepared_again(data: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    entry = _prepare(data, cache)[3]
    raw = (entry / "image.npy").read_bytes()
    (entry / "image.npy").write_bytes(raw[: len(raw) // 3])
    out = _train(data, tmp_path, cache)
    assert out.code == 0, out.output[-3000:]
    (warning,) = _cache_warnings(out)
    assert f"{entry / 'image.npy'} has" in warning and "(truncated)" in warning
    assert "Traceback" not in out.output


def _delete_half_during_the_run(
    monkeypatch: pytest.MonkeyPatch, cache: Path, sources_too: bool = False
) -> None:
    """Delete every other cache entry (and their images) once training opens the first."""
    real = PreparedSubject.arrays

    def arrays(self: PreparedSubject, mmap: bool = True):  # type: ignore[no-untyped-def]
        for entry in sorted(p.parent for p in cache.glob("*/meta.json"))[::2]:
            if sources_too:
                Path(json.loads((entry / "meta.json").read_text())["image"]).unlink()
            shutil.rmtree(entry)
        monkeypatch.setattr(PreparedSubject, "arrays", real)
        return real(self, mmap)

    monkeypatch.setattr(PreparedSubject, "arrays", arrays)


def test_half_the_cache_deleted_during_the_run_is_prepared_again(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _delete_half_during_the_run(monkeypatch, cache)
    out = _train(data, tmp_path, cache)
    assert out.code == 0, out.output[-3000:]
    warnings = _cache_warnings(out)
    assert warnings and all("changed during the run; prepared" in w for w in warnings)
    assert (tmp_path / "runs" / "r" / "checkpoints" / "last.ckpt").is_file()


def test_half_the_cache_deleted_with_its_images_is_refused_with_one_line(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _delete_half_during_the_run(monkeypatch, cache, sources_too=True)
    out = _train(data, tmp_path, cache)
    message = assert_user_error(out, "is missing", "datasets.cache_dir", "cannot be prepared again")
    assert "No such file or directory" in message and "[Errno 2]" not in message


def test_a_cache_folder_that_cannot_be_written_names_the_key(data: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = cli(
        "data",
        "prepare",
        "datasets=synth",
        f"datasets.main_path={data}",
        f"datasets.cache_dir={tmp_path / 'file' / 'c'}",
    )
    assert_user_error(out, "datasets.cache_dir=", "cannot write the prepared data")


def test_mixed_voxel_sizes_are_reported_and_recorded_in_the_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_phantoms(data, n=6, shape=(16, 20, 16), seed=0)
    for img, lbl in write_phantoms(
        tmp_path / "coarse", n=2, shape=(16, 20, 16), seed=1, spacing=2.0
    ):
        img.rename(data / img.name.replace("sub-0", "sub-1"))
        lbl.rename(data / lbl.name.replace("sub-0", "sub-1"))
    counts = "6 images at 1x1x1 mm, 2 at 2x2x2 mm"
    prepared = cli(
        "data",
        "prepare",
        "datasets=synth",
        f"datasets.main_path={data}",
        f"datasets.output_path={tmp_path}",
    )
    assert prepared.code == 0 and any(
        f"the images have mixed voxel sizes: {counts}" in w for w in prepared.warnings
    )
    out = cli(
        "train", *train_args(data, tmp_path / "runs", "run_name=m", "datasets.train_on_all=true")
    )
    assert out.code == 0, out.output[-3000:]
    (warning,) = [w for w in out.warnings if w.startswith("the training images have mixed")]
    assert counts in warning and "median 1x1x1 mm" in warning and "resample the images" in warning
    # what `hsftrain export` (and export_onnx=true) writes into the model's metadata
    run = tmp_path / "runs" / "m"
    meta = spacing_metadata(run / "checkpoints" / "last.ckpt", OmegaConf.load(run / "config.yaml"))
    assert meta["spacing_mm"] == [1.0, 1.0, 1.0]  # what inference resamples to, as before
    assert meta["spacing_mm_counts"] == [
        {"spacing_mm": [1.0, 1.0, 1.0], "images": 6},
        {"spacing_mm": [2.0, 2.0, 2.0], "images": 2},
    ]

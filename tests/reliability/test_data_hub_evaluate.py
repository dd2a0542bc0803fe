"""``hsftrain data synth``, ``hsftrain hub fetch`` and ``hsftrain evaluate``: one line per
mistake, nothing half-written, interrupted downloads cleaned up."""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .conftest import assert_no_temporaries, assert_user_error, cli, files_below

fetch_module = importlib.import_module("hsftrain.hub.fetch")  # the package exports fetch()


@pytest.mark.parametrize(
    "options, words",
    [
        (["--n", "0"], ["--n"]),
        (["--shape", "4x4x4"], ["--shape", "at least 8"]),
        (["--shape", "32x40"], ["--shape"]),
        (["--shape", "axbxc"], ["--shape"]),
    ],
)
def test_synth_bad_options(options: list[str], words: list[str], tmp_path: Path) -> None:
    out = tmp_path / "synth"
    assert_user_error(cli("data", "synth", "--out", out, *options), *words)
    assert not out.exists()


def test_synth_out_is_a_file(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.write_text("x")
    assert_user_error(cli("data", "synth", "--out", out, "--n", "1"), "--out", "is a file")


def _model_file(tmp_path: Path) -> tuple[Path, str]:
    source = tmp_path / "source" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(b"model bytes " * 100)
    return source, fetch_module.file_hash(source)


def _fetch_spec(tmp_path: Path, source: Path, digest: str) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"url: {source.as_uri()}\nxxh3_64: '{digest}'\n")
    return spec


def test_hub_fetch_unknown_name(tmp_path: Path) -> None:
    result = cli("hub", "fetch", "no_such_model", "--cache-dir", tmp_path / "cache")
    assert_user_error(result, "no_such_model")
    assert files_below(tmp_path) == set()


def test_hub_fetch_wrong_hash_keeps_nothing(tmp_path: Path) -> None:
    source, _ = _model_file(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(fetch_module.HashMismatchError, match="xxh3_64 mismatch"):
        fetch_module.fetch({"url": source.as_uri(), "xxh3_64": "0" * 16}, cache)
    assert files_below(cache) == set()


def test_cut_download_leaves_nothing_and_old_temporaries_are_cleaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, digest = _model_file(tmp_path)
    cache = tmp_path / "cache"
    spec = {"url": source.as_uri(), "xxh3_64": digest}

    def cut(stream: object, url: str) -> bytes:
        raise fetch_module.DownloadError(f"download of {url} failed: connection reset; try again")

    monkeypatch.setattr(fetch_module, "_read", cut)
    with pytest.raises(fetch_module.DownloadError, match="try again"):
        fetch_module.fetch(spec, cache)
    assert_no_temporaries(cache)
    monkeypatch.undo()
    # a temporary left by a killed run (SIGKILL: no clean-up), an old one and a fresh one
    target = fetch_module.cache_path(source.as_uri(), digest, cache)
    old = target.with_name(f".{target.name}.abc.hsftrain-tmp.onnx")
    fresh = target.with_name(f".{target.name}.def.hsftrain-tmp.onnx")
    for tmp in (old, fresh):
        tmp.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert fetch_module.fetch(spec, cache) == target
    assert not old.exists() and fresh.exists()  # another process may still be writing it


def _label_map(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[Path, Path]:
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    _label_map(tmp_path / "pred" / "s01_seg.nii.gz", labels)
    _label_map(tmp_path / "ref" / "s01_lbl.nii.gz", labels)
    return tmp_path / "pred", tmp_path / "ref"


def test_evaluate_out_is_a_file(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.write_text("x")
    result = cli("evaluate", f"pred={pairs[0]}", f"ref={pairs[1]}", f"out={out}")
    assert_user_error(result, "`out`", "is a file")
    assert out.read_text() == "x"


def test_evaluate_missing_predictions(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    result = cli("evaluate", f"pred={tmp_path / 'none'}", f"ref={pairs[1]}")
    assert_user_error(result, "none")


def test_evaluate_probabilities_instead_of_labels(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    _label_map(pairs[0] / "s01_seg.nii.gz", np.full((8, 8, 8), 0.5, np.float32))
    out = tmp_path / "report"
    result = cli("evaluate", f"pred={pairs[0]}", f"ref={pairs[1]}", f"out={out}")
    assert_user_error(result, "non-integer", "s01_seg")
    assert not (out / "metrics.csv").exists()


def test_evaluate_shape_mismatch(pairs: tuple[Path, Path], tmp_path: Path) -> None:
    _label_map(pairs[0] / "s01_seg.nii.gz", np.zeros((8, 8, 9), np.uint8))
    out = tmp_path / "report"
    result = cli("evaluate", f"pred={pairs[0]}", f"ref={pairs[1]}", f"out={out}")
    assert_user_error(result, "shape", "resample")
    assert not (out / "metrics.csv").exists()

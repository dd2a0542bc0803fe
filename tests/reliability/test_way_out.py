"""Errors about a missing file or download name the folder searched, the file expected
and the alternative (bundled model, environment variable, key)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hsftrain.hub.fetch import cache_path
from hsftrain.hub.registry import fetch_spec, load_registry

from .conftest import assert_user_error, cli


def test_an_offline_download_names_the_cache_file_and_the_bundled_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cache = tmp_path / "cache"
    out = cli("hub", "fetch", "arunet_4.0.0_single", "--cache-dir", cache)
    spec = fetch_spec(load_registry()["arunet_4.0.0_single"])
    expected = cache_path(spec["url"], spec["xxh3_64"], cache)
    message = assert_user_error(
        out, "offline", expected.name, str(cache), "HSFTRAIN_CACHE", "segmentation=msd"
    )
    assert "hsftrain_msd_1.2_ckpt" in message
    assert not list(cache.glob("*"))  # nothing half-written


@pytest.mark.parametrize(
    ("dataset", "env"), [("msd", "HSFTRAIN_MSD"), ("ashs_test", "HSFTRAIN_ASHS")]
)
def test_a_missing_data_folder_names_the_variable_that_sets_it(
    dataset: str, env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env, str(tmp_path / "nowhere"))
    out = cli("train", f"datasets={dataset}", f"datasets.output_path={tmp_path / 'runs'}")
    assert_user_error(out, env, "datasets.main_path", str(tmp_path / "nowhere"), "does not exist")
    assert not (tmp_path / "runs").exists()


def test_no_matching_image_names_the_patterns_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data" / "custom_dataset").mkdir(parents=True)
    monkeypatch.setenv("HSFTRAIN_DATA", str(tmp_path / "data"))
    out = cli("train", "datasets=custom_dataset", f"datasets.output_path={tmp_path / 'runs'}")
    assert_user_error(
        out, "HSFTRAIN_DATA", "*_T2w_hippocampus_R.nii.gz", "*_T2w_hippocampus_R_seg.nii.gz"
    )
